package bap

// MaxUserIDLen is the longest accepted user_id.
const MaxUserIDLen = 128

// UserID is a product-chosen user id that ParseUserID accepted. The API
// parses it once, at the edge, and the layers below take this type, so
// they need not check it again.
type UserID string

// ParseUserID checks a product-chosen user id: 1–128 characters of
// [A-Za-z0-9._@:-], not starting with '.'. The id ends up in names and
// paths, so nothing else may pass. The error is a VALIDATION_ERROR.
func ParseUserID(s string) (UserID, error) {
	if err := validateUserID(s); err != nil {
		return "", err
	}
	return UserID(s), nil
}

func validateUserID(s string) error {
	if s == "" {
		return Errorf(CodeValidation, "user_id must not be empty")
	}
	if len(s) > MaxUserIDLen {
		return Errorf(CodeValidation, "user_id must be at most %d characters", MaxUserIDLen)
	}
	if s[0] == '.' {
		return Errorf(CodeValidation, "user_id must not start with '.'")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.', c == '_', c == '@', c == ':', c == '-':
		default:
			return Errorf(CodeValidation, "user_id may contain only letters, digits and . _ @ : - (found %q at position %d)", rune(c), i)
		}
	}
	return nil
}

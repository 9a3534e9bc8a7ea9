package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/september/bap-engine/client"
)

// watchEvery is how often --watch polls.
const watchEvery = 2 * time.Second

// watch runs render once, or with on, again every watchEvery until ctx
// ends, printing its output each time it differs from the last one shown.
func watch(ctx context.Context, on bool, w io.Writer, render func(context.Context, *printer) error, base *printer) error {
	if !on {
		p := *base
		p.w = w
		return render(ctx, &p)
	}
	var last []byte
	t := time.NewTicker(watchEvery)
	defer t.Stop()
	for {
		var buf bytes.Buffer
		p := *base
		p.w = &buf
		if err := render(ctx, &p); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if !bytes.Equal(buf.Bytes(), last) {
			if last != nil {
				fmt.Fprintln(w)
			}
			if _, err := w.Write(buf.Bytes()); err != nil {
				return err
			}
			last = buf.Bytes()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// confirm asks on a terminal for answer before a destructive command, and
// refuses elsewhere unless yes was given (a script must say --yes).
func confirm(in io.Reader, out io.Writer, yes bool, question, answer string) error {
	if yes {
		return nil
	}
	f, ok := in.(*os.File)
	if !ok || !isTerminal(f) {
		return errors.New("refusing to destroy without --yes: stdin is not a terminal to ask on")
	}
	fmt.Fprint(out, question)
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if strings.TrimSpace(line) != answer {
		return errors.New("not confirmed: nothing destroyed")
	}
	return nil
}

// cliContext is what `bap-engine login` saves: the orchestrator to talk to
// and the keys, so the other commands need neither flags nor variables.
type cliContext struct {
	URL         string `json:"url"`
	PlatformKey string `json:"platform_key,omitempty"`
	AdminKey    string `json:"admin_key,omitempty"`
}

// contextPath is the login context file in the user's config directory
// ($XDG_CONFIG_HOME, else ~/.config).
func contextPath(getenv func(string) string) (string, error) {
	dir := getenv("XDG_CONFIG_HOME")
	if dir == "" {
		home := getenv("HOME")
		if home == "" {
			return "", errors.New("neither XDG_CONFIG_HOME nor HOME is set: no config directory for the login context")
		}
		dir = filepath.Join(home, ".config")
	}
	return filepath.Join(dir, "bap-engine", "context.json"), nil
}

// loadContext reads the login context; none is the zero context.
func loadContext(getenv func(string) string) (cliContext, error) {
	var c cliContext
	path, err := contextPath(getenv)
	if err != nil {
		return c, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, fmt.Errorf("read login context: %w", err)
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("login context %s: %w", path, err)
	}
	return c, nil
}

// saveContext writes c with mode 0600 (the directory 0700): it holds keys.
func saveContext(getenv func(string) string, c cliContext) (string, error) {
	path, err := contextPath(getenv)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return "", err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return "", fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return "", err
	}
	return path, os.Rename(tmp, path)
}

// loginCmd saves the orchestrator URL and keys, after checking them
// against it, for the other commands.
func loginCmd(getenv func(string) string, stdout io.Writer, f *cliFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "login",
		Short: "Check and save the orchestrator URL and keys for the other commands (mode 0600, in your config directory)",
		Long: "login checks the keys given (--platform-key, --admin-key, or BAP_PLATFORM_KEY and\n" +
			"BAP_ADMIN_KEY) against the orchestrator (--url or BAP_URL) and saves them in\n" +
			"$XDG_CONFIG_HOME/bap-engine/context.json (~/.config/… without it), mode 0600.\n" +
			"Flags and variables still win over the saved context.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			url, pk, ak, err := f.resolve()
			if err != nil {
				return err
			}
			if pk == "" && ak == "" {
				return errors.New("no key to save: give --platform-key and/or --admin-key (or BAP_PLATFORM_KEY / BAP_ADMIN_KEY)")
			}
			c := client.New(url, client.WithPlatformKey(pk), client.WithAdminKey(ak))
			var said []string
			if ak != "" {
				list, err := c.Products(cmd.Context())
				if err != nil {
					return fmt.Errorf("admin key: %w", err)
				}
				said = append(said, fmt.Sprintf("admin key ok (%d products)", list.Total))
			}
			if pk != "" {
				st, err := c.Status(cmd.Context())
				if err != nil {
					return fmt.Errorf("platform key: %w", err)
				}
				said = append(said, fmt.Sprintf("platform key ok (%d engines)", st.Total))
			}
			path, err := saveContext(getenv, cliContext{URL: url, PlatformKey: pk, AdminKey: ak})
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "logged in to %s: %s; saved in %s\n", url, strings.Join(said, ", "), path)
			return nil
		},
	}
	f.register(cmd, getenv)
	return cmd
}

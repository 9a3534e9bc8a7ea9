package backend

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// CopyData makes dst's data the same as src's: the regular files of dst
// that are neither in keep nor hidden are removed, then those of src
// (again but keep and hidden ones) are copied in, each synced. It is how a
// brain snapshot is taken and restored, by the subprocess backend directly
// and by the docker backend's helper container (`bap-engine snapshot`).
// Engine data is a flat directory (the brain and its journal files);
// subdirectories are left alone.
func CopyData(ctx context.Context, src, dst string, keep []string) error {
	if err := os.MkdirAll(dst, 0o700); err != nil {
		return err
	}
	skip := func(e os.DirEntry) bool {
		return !e.Type().IsRegular() || slices.Contains(keep, e.Name()) || strings.HasPrefix(e.Name(), ".")
	}
	old, err := os.ReadDir(dst)
	if err != nil {
		return err
	}
	for _, e := range old {
		if skip(e) {
			continue
		}
		if err := os.Remove(filepath.Join(dst, e.Name())); err != nil {
			return err
		}
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return err
		}
		if skip(e) {
			continue
		}
		if err := copyFile(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())); err != nil {
			return err
		}
	}
	return syncDir(dst)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("copy %s: %w", filepath.Base(src), err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

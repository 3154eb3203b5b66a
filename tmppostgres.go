package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"time"

	"github.com/pgchat/pgchat/store"
)

// tempPostgres is a throwaway PostgreSQL cluster in a temporary directory,
// initialized by initTempPostgres; pgchat cluster and the tests that
// restart a server run it. Delete Dir when done.
type tempPostgres struct {
	Bin   string     // directory of initdb, postgres and pg_ctl
	Dir   string     // the temporary directory: data, socket, logs
	Data  string     // the data directory
	Port  int        // a free local port
	RunAs *user.User // set when running as root: initdb refuses to
}

// initTempPostgres initializes a cluster (trust auth, user postgres) with
// the server programs in bin. As root the files belong to, and the server
// must run as, the postgres (or nobody) user.
func initTempPostgres(ctx context.Context, bin string) (*tempPostgres, error) {
	p := &tempPostgres{Bin: bin}
	if os.Geteuid() == 0 {
		for _, name := range []string{"postgres", "nobody"} {
			if u, err := user.Lookup(name); err == nil {
				p.RunAs = u
				break
			}
		}
		if p.RunAs == nil {
			return nil, errors.New("initdb refuses to run as root, and there is no postgres or nobody user to run it as: run as a normal user, or set DATABASE_URL")
		}
	}
	dir, err := os.MkdirTemp("", "pgchat-db-")
	if err != nil {
		return nil, err
	}
	p.Dir, p.Data = dir, filepath.Join(dir, "data")
	if p.RunAs != nil {
		uid, _ := strconv.Atoi(p.RunAs.Uid)
		gid, _ := strconv.Atoi(p.RunAs.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("hand %s to user %s: %w", dir, p.RunAs.Username, err)
		}
	}
	initdb := p.command(ctx, "initdb", "-D", p.Data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "-N")
	if initdb.Err != nil {
		os.RemoveAll(dir)
		return nil, initdb.Err
	}
	if out, err := initdb.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %v: %s", err, bytes.TrimSpace(out))
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	p.Port = ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return p, nil
}

// command returns the server program name with args, to run in Dir as
// RunAs. Its Err is set when the user's ids are unusable.
func (p *tempPostgres) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(p.Bin, name), args...)
	cmd.Dir = p.Dir
	attr, err := childAttr(p.RunAs)
	if err != nil {
		cmd.Err = err
	}
	cmd.SysProcAttr = attr
	return cmd
}

// serverOptions are postgres's options: local TCP only, on Port, with its
// socket in Dir.
func (p *tempPostgres) serverOptions() []string {
	return []string{"-p", strconv.Itoa(p.Port), "-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories=" + p.Dir, "-c", "max_connections=300"}
}

// URL is the cluster's postgres database.
func (p *tempPostgres) URL() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", p.Port)
}

// waitAccepting polls until the server accepts connections, exited is
// closed, ctx ends or timeout passes.
func (p *tempPostgres) waitAccepting(ctx context.Context, exited <-chan struct{}, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := store.Connect(pctx, p.URL(), "probe")
		cancel()
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		select {
		case <-exited:
			return errors.New("the PostgreSQL server exited")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("PostgreSQL did not answer within %s: %w", timeout, err)
		}
	}
}

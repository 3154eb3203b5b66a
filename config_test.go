package main

import (
	"bytes"
	"context"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	cfg, err := loadConfig([]string{"APP_ID=app-7"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Port != 8080 || cfg.HistoryLimit != 50 || cfg.MaxMessageBytes != 4096 || cfg.ShutdownTimeout != 10*time.Second {
		t.Errorf("defaults = %+v", cfg)
	}
	if cfg.InstanceID != "app-7" {
		t.Errorf("INSTANCE_ID defaulted to %q, want APP_ID's app-7", cfg.InstanceID)
	}
	if cfg.ListenDatabaseURL != cfg.DatabaseURL {
		t.Errorf("LISTEN_DATABASE_URL = %q, want DATABASE_URL %q", cfg.ListenDatabaseURL, cfg.DatabaseURL)
	}
	cfg, _ = loadConfig([]string{"APP_ID=app-7", "FLY_MACHINE_ID=148e1"})
	if cfg.InstanceID != "148e1" {
		t.Errorf("INSTANCE_ID = %q, want FLY_MACHINE_ID first", cfg.InstanceID)
	}
}

func TestConfigErrorsNameTheVariable(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ env, want string }{
		{"PORT=http", "PORT"},
		{"SHUTDOWN_TIMEOUT=10", "SHUTDOWN_TIMEOUT"},
		{"LOG_FORMAT=xml", "LOG_FORMAT"},
		{"MAX_MESSAGE_BYTES=0", "MAX_MESSAGE_BYTES"},
		{"LOG_LEVEL=loud", "LOG_LEVEL"},
		{"RATE_LIMIT=0", "RATE_LIMIT"},
		{"AUTH_SECRET=too-short", "AUTH_SECRET"},
		{"TRUSTED_PROXIES=proxy.example.com", "TRUSTED_PROXIES"},
		{"MAX_FRAME_BYTES=1000", "MAX_FRAME_BYTES"},
		{"MAX_CONNECTIONS_PER_IP=-1", "MAX_CONNECTIONS_PER_IP"},
		{"HANDSHAKE_TIMEOUT=0s", "HANDSHAKE_TIMEOUT"},
	} {
		_, err := loadConfig([]string{tc.env})
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("loadConfig(%s) error = %v, want one line starting with %s", tc.env, err, tc.want)
		}
	}
}

// TestDocsListEveryVariable keeps the README and `pgchat help` in step with
// Config.
func TestDocsListEveryVariable(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	var help bytes.Buffer
	if err := run(context.Background(), []string{"help"}, nil, &help, &help); err != nil {
		t.Fatal(err)
	}
	typ := reflect.TypeFor[Config]()
	for i := range typ.NumField() {
		key := typ.Field(i).Tag.Get("env")
		if !bytes.Contains(readme, []byte("`"+key+"`")) {
			t.Errorf("README.md does not document %s", key)
		}
		if !strings.Contains(help.String(), key) {
			t.Errorf("pgchat help does not list %s", key)
		}
	}
}

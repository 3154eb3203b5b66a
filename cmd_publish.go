package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// publishHTTP posts body to f.room through the publish API and returns its
// seq. It retries 429, 503 and network errors with the same ref, so the
// message is stored once, until ctx ends.
func publishHTTP(ctx context.Context, f clientFlags, body string) (int64, error) {
	u, err := url.Parse(f.url)
	if err != nil {
		return 0, fmt.Errorf("bad -url: %w", err)
	}
	switch u.Scheme {
	case "ws":
		u.Scheme = "http"
	case "wss":
		u.Scheme = "https"
	case "http", "https":
	default:
		return 0, fmt.Errorf("bad -url %q: want http://host:port", f.url)
	}
	u.Path = "/api/rooms/" + url.PathEscape(f.room) + "/messages"
	if f.name == "" && f.token == "" {
		return 0, errors.New("-http needs -name (or -token): the publish API has no guest names")
	}
	payload, _ := json.Marshal(map[string]string{"body": body, "author": f.name, "ref": "send-" + rand.Text()[:16]})
	delay := 250 * time.Millisecond
	for {
		seq, retry, err := postOnce(ctx, u.String(), f.token, payload)
		if !retry {
			return seq, err
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("no answer in time (-timeout); the message may or may not be stored; last error: %w", err)
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

func postOnce(ctx context.Context, u, token string, payload []byte) (seq int64, retry bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(payload))
	if err != nil {
		return 0, false, err
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, true, err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var out struct {
		Seq     int64  `json:"seq"`
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	json.Unmarshal(data, &out)
	switch {
	case resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusCreated:
		return out.Seq, false, nil
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return 0, true, fmt.Errorf("%s: %s", resp.Status, out.Message)
	case out.Code != "":
		return 0, false, fmt.Errorf("%s: %s", out.Code, out.Message)
	}
	return 0, false, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(data)))
}

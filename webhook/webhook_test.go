package webhook

import (
	"testing"
	"time"
)

func TestSignVerify(t *testing.T) {
	secret, body := []byte("0123456789abcdef0123456789abcdef"), []byte(`{"room":"a","events":[]}`)
	now := time.Unix(1796158092, 0)
	h := Sign(secret, now, body)
	if err := Verify(secret, h, body, now.Add(time.Minute), 5*time.Minute); err != nil {
		t.Fatalf("a fresh signature: %v", err)
	}
	for name, c := range map[string]struct {
		secret []byte
		header string
		body   string
		now    time.Time
	}{
		"other body":      {secret, h, `{"room":"b","events":[]}`, now},
		"other secret":    {[]byte("x"), h, string(body), now},
		"replayed later":  {secret, h, string(body), now.Add(time.Hour)},
		"no v1":           {secret, "t=1796158092", string(body), now},
		"empty header":    {secret, "", string(body), now},
		"time not signed": {secret, "t=1796158093," + h[len("t=1796158092,"):], string(body), now},
	} {
		if err := Verify(c.secret, c.header, []byte(c.body), c.now, 5*time.Minute); err == nil {
			t.Errorf("%s: verified", name)
		}
	}
}

func TestBackoff(t *testing.T) {
	for attempt := 1; attempt < 40; attempt++ {
		d := backoff(time.Second, time.Minute, attempt)
		ceil := min(time.Minute, time.Second<<min(attempt-1, 30))
		if d < 500*time.Millisecond || d > ceil {
			t.Fatalf("attempt %d: %v, want between 500ms and %v", attempt, d, ceil)
		}
	}
}

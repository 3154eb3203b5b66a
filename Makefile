# pgchat: common tasks. See README.md.
GO ?= go
STATICCHECK ?= $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: run build test lint fuzz cluster

# Run one instance against the local PostgreSQL (DATABASE_URL to change it).
run:
	$(GO) run .

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o pgchat .

# The scale-out demo without Docker: 3 instances behind HAProxy on :8080
# (ARGS="-n 5 -port 9000" to change; see pgchat cluster -h). Ctrl-C stops it.
# It runs the built binary, not go run, which turns a clean Ctrl-C into
# exit status 1 ("make: *** Error 1").
cluster: build
	./pgchat cluster $(ARGS)

# The test suite: real PostgreSQL, real WebSockets, the race detector; then
# every benchmark once, so they keep compiling and running
# (docs/performance.md runs them properly).
test:
	$(GO) test -race -count=1 -timeout 20m ./...
	$(GO) test -run '^$$' -bench . -benchtime=1x ./...

lint:
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	$(GO) vet ./...
	$(STATICCHECK) ./...

# Fuzz the frame decoder and the token parser for a while each (their seed
# corpora run in every test run).
fuzz:
	$(GO) test ./chat -run '^$$' -fuzz '^FuzzDecodeFrame$$' -fuzztime 2m
	$(GO) test ./chat -run '^$$' -fuzz '^FuzzParseToken$$' -fuzztime 2m

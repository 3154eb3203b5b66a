// Package jsclient embeds pgchat-client, the JavaScript client in this
// directory, so that the server can serve it to its page (and to anyone's)
// from the same build: one copy of the client, no build step.
package jsclient

import _ "embed"

// Source is index.js, the client's ES module.
//
//go:embed index.js
var Source []byte

// Types is index.d.ts, its TypeScript declarations.
//
//go:embed index.d.ts
var Types []byte

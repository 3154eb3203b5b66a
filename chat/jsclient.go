package chat

import (
	"bytes"
	"net/http"
	"time"

	jsclient "github.com/pgchat/pgchat/clients/js"
)

// started is the Last-Modified of the embedded client: it changes with the
// binary, which is when the file can change.
var started = time.Now()

// serveJSClient serves the JavaScript client (clients/js/index.js) at
// /pgchat-client.js, the ES module the page imports; other sites may use it
// too.
func serveJSClient(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
	http.ServeContent(w, r, "pgchat-client.js", started, bytes.NewReader(jsclient.Source))
}

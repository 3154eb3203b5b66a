package store_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/pgchat/pgchat/store"
	"github.com/pgchat/pgchat/store/storetest"
)

// BenchmarkAppendSearchIndex is what a search index on the append path
// would cost: batches of 500 messages over 100 rooms (what the Batcher
// commits under load), bodies of about 128 bytes of words, as the schema
// is (the index, message_search, is filled off the append path) and with
// an inline GIN index on messages added, the design docs/performance.md
// ("Search") measured and rejected. Run with -count to alternate them.
func BenchmarkAppendSearchIndex(b *testing.B) {
	words := strings.Fields("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu")
	for _, inline := range []bool{false, true} {
		name := map[bool]string{false: "off_path", true: "inline_index"}[inline]
		b.Run(name, func(b *testing.B) {
			url := storetest.NewDB(b)
			db := open(b, url, "bench")
			if inline {
				if _, err := connect(b, url).Exec(b.Context(), "create index messages_search_inline on messages using gin (to_tsvector('simple', body))"); err != nil {
					b.Fatal(err)
				}
			}
			msgs := make([]store.NewMessage, 500)
			k := 0
			b.ReportAllocs()
			for b.Loop() {
				for i := range msgs {
					k++
					var body strings.Builder
					for j := 0; body.Len() < 120; j++ {
						fmt.Fprintf(&body, "%s%d ", words[(k*7+j*13)%len(words)], (k+j)%97)
					}
					msgs[i] = store.NewMessage{Room: fmt.Sprintf("room-%d", i%100), Author: "alice", Body: body.String(), Ref: fmt.Sprint("r-", k)}
				}
				if _, err := db.Append(b.Context(), msgs); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(msgs)), "ns/msg")
		})
	}
}

package client_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/signal"

	"github.com/pgchat/pgchat/client"
)

// A bot that prints the room as it goes and says hello once. Across
// reconnects it sees every message once, in order, and its hello is stored
// once.
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	c := client.New(client.Options{
		URL:   "ws://localhost:8080",
		Name:  "bot",
		Rooms: []string{"general"},
		OnMessage: func(m client.Message) {
			fmt.Printf("#%d %s: %s\n", m.Seq, m.Author, m.Body)
		},
	})
	go func() {
		seq, err := c.Send(ctx, "general", "hello from the bot")
		if err != nil {
			log.Print(err)
			return
		}
		log.Printf("hello stored as #%d", seq)
	}()
	if err := c.Run(ctx); err != nil { // until Ctrl-C
		log.Fatal(err)
	}
}

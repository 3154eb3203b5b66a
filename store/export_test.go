package store

// DecodeFast is decodeFast, for the external tests: notifications made by
// the database must take the fast decoder, not the fallback.
func DecodeFast(p string) (Notification, bool) { return decodeFast(p) }

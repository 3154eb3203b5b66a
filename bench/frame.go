package bench

// frame holds what the bench reads from a server frame. Its slices point
// into the frame's bytes and hold raw JSON string contents (escapes are not
// decoded: the bench only compares rooms and refs it made itself and reads
// the digits at the start of bodies it wrote).
type frame struct {
	typ, room, body, ref, code, message []byte
	seq                                 int64
	count                               int64 // presence frames
}

// scanFrame reads the top-level fields of a server frame without decoding
// the JSON into a map or struct: the receive path must stay cheap so the
// bench is not the bottleneck. It reports whether data is a JSON object.
func scanFrame(data []byte, f *frame) bool {
	*f = frame{}
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return false
	}
	i++
	for {
		i = skipSpace(data, i)
		if i >= len(data) {
			return false
		}
		if data[i] == '}' {
			return true
		}
		if data[i] == ',' {
			i = skipSpace(data, i+1)
		}
		key, j, ok := scanString(data, i)
		if !ok {
			return false
		}
		i = skipSpace(data, j)
		if i >= len(data) || data[i] != ':' {
			return false
		}
		i = skipSpace(data, i+1)
		if i >= len(data) {
			return false
		}
		if data[i] == '"' {
			val, j, ok := scanString(data, i)
			if !ok {
				return false
			}
			switch string(key) { // no allocation: the compiler special-cases this
			case "type":
				f.typ = val
			case "room":
				f.room = val
			case "body":
				f.body = val
			case "ref":
				f.ref = val
			case "code":
				f.code = val
			case "message":
				f.message = val
			}
			i = j
			continue
		}
		j, ok = skipValue(data, i)
		if !ok {
			return false
		}
		switch string(key) {
		case "seq":
			f.seq, _ = leadingInt(data[i:j])
		case "count":
			f.count, _ = leadingInt(data[i:j])
		}
		i = j
	}
}

func skipSpace(data []byte, i int) int {
	for i < len(data) && (data[i] == ' ' || data[i] == '\n' || data[i] == '\r' || data[i] == '\t') {
		i++
	}
	return i
}

// scanString returns the raw contents of the JSON string starting at
// data[i] (a quote) and the index after its closing quote.
func scanString(data []byte, i int) (val []byte, end int, ok bool) {
	if i >= len(data) || data[i] != '"' {
		return nil, 0, false
	}
	for j := i + 1; j < len(data); j++ {
		switch data[j] {
		case '\\':
			j++
		case '"':
			return data[i+1 : j], j + 1, true
		}
	}
	return nil, 0, false
}

// skipValue skips a non-string JSON value (number, literal, object, array)
// starting at data[i].
func skipValue(data []byte, i int) (int, bool) {
	depth := 0
	for i < len(data) {
		switch c := data[i]; c {
		case '"':
			_, j, ok := scanString(data, i)
			if !ok {
				return 0, false
			}
			i = j
			continue
		case '{', '[':
			depth++
		case '}', ']':
			if depth == 0 {
				return i, true
			}
			depth--
			if depth == 0 {
				return i + 1, true
			}
		case ',':
			if depth == 0 {
				return i, true
			}
		}
		i++
	}
	return i, depth == 0
}

// leadingInt parses the decimal digits at the start of b.
func leadingInt(b []byte) (int64, bool) {
	var n int64
	i := 0
	for ; i < len(b) && i < 19 && b[i] >= '0' && b[i] <= '9'; i++ {
		n = n*10 + int64(b[i]-'0')
	}
	return n, i > 0
}

// Command tlogclient checks a consent-ledger log the way any C2SP tlog-tiles
// client would: with Go's own golang.org/x/mod/sumdb/note and sumdb/tlog,
// over HTTP, trusting nothing but the verifier key.
//
// It fetches /tlog/checkpoint and verifies the signed note (note.Open), reads
// the tree through tlog.TileHashReader over /tlog/tile/... (which
// authenticates every tile against the signed root), checks every entry
// bundle against the authenticated leaf hashes, proves and checks inclusion
// (tlog.ProveRecord, tlog.CheckRecord) for a sample of entries, and proves
// and checks consistency (tlog.ProveTree, tlog.CheckTree) between a
// checkpoint saved earlier and the latest one. The server's own RFC 9162
// proofs from /v1/ledger/proofs/... are checked with the same functions.
// Tampered tiles and a key that merely claims the log's name must fail.
//
// It prints what it checked, then "OK", and exits 0; or "FAIL: …" and exits 1.
//
// Usage:
//
//	TLOG_BEARER=… LEDGER_BEARER=… tlogclient -url http://127.0.0.1:8000 \
//	    -vkey 'origin+1234abcd+AQ…' -old saved.checkpoint
//
// TLOG_BEARER authenticates /tlog/ requests (unset when the log is public);
// LEDGER_BEARER (an `audit` key) enables the /v1/ledger/ cross-checks.
//
// Built in GOPATH mode against Debian's golang-golang-x-mod-dev
// (GOPATH=/usr/share/gocode GO111MODULE=off), so no network is needed.
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

const height = 8 // C2SP tlog-tiles: tiles are always of height 8

type client struct {
	base         string
	tlogBearer   string
	ledgerBearer string
	http         *http.Client
	requests     int
}

func (c *client) get(path string) ([]byte, error) {
	req, err := http.NewRequest("GET", c.base+path, nil)
	if err != nil {
		return nil, err
	}
	bearer := c.ledgerBearer
	if strings.HasPrefix(path, "/tlog/") {
		bearer = c.tlogBearer
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	c.requests++
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %.200s", path, resp.Status, body)
	}
	return body, nil
}

// tilePath maps x/mod's tile coordinates (tile/H/L/NNN, data tiles at level
// "data") onto the tlog-tiles paths, where the height is fixed at 8 and left
// out, and entry bundles live under tile/entries/.
func tilePath(t tlog.Tile) string {
	if t.H != height {
		panic("tiles here are of height 8")
	}
	p := strings.TrimPrefix(t.Path(), fmt.Sprintf("tile/%d/", height))
	if strings.HasPrefix(p, "data/") {
		p = "entries/" + strings.TrimPrefix(p, "data/")
	}
	return "/tlog/tile/" + p
}

// tileReader fetches hash tiles over HTTP; tlog.TileHashReader authenticates them.
type tileReader struct {
	c       *client
	corrupt bool // flip a bit in every tile, to prove that tampering is caught
	fetched map[string]tlog.Tile
}

func (r *tileReader) Height() int { return height }

func (r *tileReader) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		path := tilePath(t)
		data, err := r.c.get(path)
		if err != nil {
			return nil, err
		}
		if len(data) != t.W*tlog.HashSize {
			return nil, fmt.Errorf("%s: %d bytes, want %d", path, len(data), t.W*tlog.HashSize)
		}
		if r.corrupt {
			data[len(data)-1] ^= 1
		}
		r.fetched[path] = t
		out[i] = data
	}
	return out, nil
}

func (r *tileReader) SaveTiles([]tlog.Tile, [][]byte) {}

// openCheckpoint verifies a C2SP signed note and parses its tlog-checkpoint body.
func openCheckpoint(msg []byte, verifier note.Verifier) (tlog.Tree, error) {
	n, err := note.Open(msg, note.VerifierList(verifier))
	if err != nil {
		return tlog.Tree{}, fmt.Errorf("note.Open: %w", err)
	}
	lines := strings.Split(n.Text, "\n")
	if len(lines) != 4 || lines[3] != "" {
		return tlog.Tree{}, fmt.Errorf("not a three-line checkpoint: %q", n.Text)
	}
	if lines[0] != verifier.Name() {
		return tlog.Tree{}, fmt.Errorf("origin %q, want %q", lines[0], verifier.Name())
	}
	// tlog.ParseTree reads the go.sum flavour of the same body, whose first
	// line is fixed; a tlog-checkpoint has the origin there (checked above).
	return tlog.ParseTree([]byte("go.sum database tree\n" + lines[1] + "\n" + lines[2] + "\n"))
}

// entryBundle splits a tlog-tiles entry bundle: big-endian uint16 length, then the bytes.
func entryBundle(data []byte) ([][]byte, error) {
	var records [][]byte
	for len(data) > 0 {
		if len(data) < 2 {
			return nil, errors.New("truncated length prefix")
		}
		n := int(binary.BigEndian.Uint16(data))
		if len(data) < 2+n {
			return nil, errors.New("truncated entry")
		}
		records = append(records, data[2:2+n])
		data = data[2+n:]
	}
	return records, nil
}

func decodeHashes(encoded []string) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(encoded))
	for i, text := range encoded {
		raw, err := base64.StdEncoding.DecodeString(text)
		if err != nil || len(raw) != tlog.HashSize {
			return nil, fmt.Errorf("bad hash %q", text)
		}
		copy(out[i][:], raw)
	}
	return out, nil
}

func run(c *client, vkey string, oldNote []byte) error {
	verifier, err := note.NewVerifier(vkey)
	if err != nil {
		return fmt.Errorf("note.NewVerifier: %w", err)
	}
	latest, err := c.get("/tlog/checkpoint")
	if err != nil {
		return err
	}
	tree, err := openCheckpoint(latest, verifier)
	if err != nil {
		return fmt.Errorf("latest checkpoint: %w", err)
	}
	old, err := openCheckpoint(oldNote, verifier)
	if err != nil {
		return fmt.Errorf("saved checkpoint: %w", err)
	}
	if old.N > tree.N {
		return fmt.Errorf("saved checkpoint (size %d) is ahead of the latest (%d)", old.N, tree.N)
	}
	fmt.Printf("checkpoint: %s size %d root %s (saved: size %d)\n", verifier.Name(), tree.N, tree.Hash, old.N)

	reader := &tileReader{c: c, fetched: map[string]tlog.Tile{}}
	hashes := tlog.TileHashReader(tree, reader)
	root, err := tlog.TreeHash(tree.N, hashes)
	if err != nil {
		return fmt.Errorf("TreeHash from tiles: %w", err)
	}
	if root != tree.Hash {
		return fmt.Errorf("tiles give root %s, checkpoint says %s", root, tree.Hash)
	}

	// Every entry bundle, against the authenticated leaf hashes.
	records := make([][]byte, 0, tree.N)
	bundles := 0
	for first := int64(0); first < tree.N; first += 1 << height {
		width := tree.N - first
		if width > 1<<height {
			width = 1 << height
		}
		t := tlog.Tile{H: height, L: -1, N: first >> height, W: int(width)}
		data, err := c.get(tilePath(t))
		if err != nil {
			return err
		}
		bundle, err := entryBundle(data)
		if err != nil {
			return fmt.Errorf("%s: %w", tilePath(t), err)
		}
		if int64(len(bundle)) != width {
			return fmt.Errorf("%s: %d entries, want %d", tilePath(t), len(bundle), width)
		}
		indexes := make([]int64, width)
		for j := range indexes {
			indexes[j] = tlog.StoredHashIndex(0, first+int64(j))
		}
		leaves, err := hashes.ReadHashes(indexes)
		if err != nil {
			return fmt.Errorf("leaf hashes of %s: %w", tilePath(t), err)
		}
		for j, record := range bundle {
			if tlog.RecordHash(record) != leaves[j] {
				return fmt.Errorf("entry %d in %s does not hash to its leaf", first+int64(j), tilePath(t))
			}
		}
		records = append(records, bundle...)
		bundles++
	}
	fmt.Printf("entry bundles: %d bundles, %d entries match the tree\n", bundles, len(records))

	// Inclusion of a sample of records, including both sides of every tile edge.
	sample := map[int64]bool{}
	for _, n := range []int64{0, 1, 254, 255, 256, 257, 511, 512, 513, tree.N / 2, old.N - 1, old.N, tree.N - 2, tree.N - 1} {
		if n >= 0 && n < tree.N {
			sample[n] = true
		}
	}
	indices := make([]int64, 0, len(sample))
	for n := range sample {
		indices = append(indices, n)
	}
	sort.Slice(indices, func(a, b int) bool { return indices[a] < indices[b] })
	for _, n := range indices {
		leaf := tlog.RecordHash(records[n])
		proof, err := tlog.ProveRecord(tree.N, n, hashes)
		if err != nil {
			return fmt.Errorf("ProveRecord(%d, %d): %w", tree.N, n, err)
		}
		if err := tlog.CheckRecord(proof, tree.N, tree.Hash, n, leaf); err != nil {
			return fmt.Errorf("CheckRecord(%d): %w", n, err)
		}
		wrong := tlog.RecordHash(append([]byte("x"), records[n]...))
		if tlog.CheckRecord(proof, tree.N, tree.Hash, n, wrong) == nil {
			return fmt.Errorf("CheckRecord(%d) accepted the wrong record", n)
		}
		if c.ledgerBearer == "" {
			continue
		}
		// The JSON API serves the same canonical bytes and an RFC 9162 proof tlog accepts.
		raw, err := c.get(fmt.Sprintf("/v1/ledger/entries/%d", n))
		if err != nil {
			return err
		}
		var entry struct {
			Index     int64  `json:"index"`
			Canonical string `json:"canonical"`
		}
		if err := json.Unmarshal(raw, &entry); err != nil {
			return err
		}
		canonical, err := base64.StdEncoding.DecodeString(entry.Canonical)
		if err != nil || entry.Index != n || !bytes.Equal(canonical, records[n]) {
			return fmt.Errorf("/v1/ledger/entries/%d differs from the entry bundle", n)
		}
		raw, err = c.get(fmt.Sprintf("/v1/ledger/proofs/inclusion?index=%d&tree_size=%d", n, tree.N))
		if err != nil {
			return err
		}
		var served struct {
			LeafHash string   `json:"leaf_hash"`
			Hashes   []string `json:"hashes"`
		}
		if err := json.Unmarshal(raw, &served); err != nil {
			return err
		}
		servedProof, err := decodeHashes(served.Hashes)
		if err != nil {
			return err
		}
		if err := tlog.CheckRecord(servedProof, tree.N, tree.Hash, n, leaf); err != nil {
			return fmt.Errorf("served inclusion proof of %d: %w", n, err)
		}
		if served.LeafHash != base64.StdEncoding.EncodeToString(leaf[:]) {
			return fmt.Errorf("served leaf hash of %d differs", n)
		}
	}
	fmt.Printf("inclusion: %d records proven with ProveRecord/CheckRecord: %v\n", len(indices), indices)

	// The saved checkpoint is a prefix of the latest one.
	treeProof, err := tlog.ProveTree(tree.N, old.N, hashes)
	if err != nil {
		return fmt.Errorf("ProveTree(%d, %d): %w", tree.N, old.N, err)
	}
	if err := tlog.CheckTree(treeProof, tree.N, tree.Hash, old.N, old.Hash); err != nil {
		return fmt.Errorf("CheckTree(%d, %d): %w", tree.N, old.N, err)
	}
	if tlog.CheckTree(treeProof, tree.N, tree.Hash, old.N, tree.Hash) == nil {
		return errors.New("CheckTree accepted a wrong old root")
	}
	if c.ledgerBearer != "" && old.N < tree.N {
		raw, err := c.get(fmt.Sprintf("/v1/ledger/proofs/consistency?old_size=%d&new_size=%d", old.N, tree.N))
		if err != nil {
			return err
		}
		var served struct {
			Hashes []string `json:"hashes"`
		}
		if err := json.Unmarshal(raw, &served); err != nil {
			return err
		}
		servedProof, err := decodeHashes(served.Hashes)
		if err != nil {
			return err
		}
		if err := tlog.CheckTree(servedProof, tree.N, tree.Hash, old.N, old.Hash); err != nil {
			return fmt.Errorf("served consistency proof %d -> %d: %w", old.N, tree.N, err)
		}
	}
	fmt.Printf("consistency: %d -> %d proven with ProveTree/CheckTree\n", old.N, tree.N)

	full, partial := 0, 0
	levels := map[int]bool{}
	for _, t := range reader.fetched {
		levels[t.L] = true
		if t.W == 1<<height {
			full++
		} else {
			partial++
		}
	}
	paths := make([]string, 0, len(reader.fetched))
	for p := range reader.fetched {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	fmt.Printf("hash tiles: full=%d partial=%d levels=%d %v\n", full, partial, len(levels), paths)

	// Tampering is caught: tiles that do not hash to the signed root ...
	bad := &tileReader{c: c, corrupt: true, fetched: map[string]tlog.Tile{}}
	if _, err := tlog.ProveRecord(tree.N, 0, tlog.TileHashReader(tree, bad)); err == nil {
		return errors.New("corrupted tiles were accepted")
	}
	// ... and a key that merely claims the log's name.
	_, impostor, err := note.GenerateKey(rand.Reader, verifier.Name())
	if err != nil {
		return err
	}
	impostorVerifier, err := note.NewVerifier(impostor)
	if err != nil {
		return err
	}
	if _, err := openCheckpoint(latest, impostorVerifier); err == nil {
		return errors.New("a checkpoint opened under an impostor key")
	}
	fmt.Println("tampering: corrupted tiles and an impostor key are rejected")
	fmt.Printf("requests: %d\n", c.requests)
	return nil
}

func main() {
	base := flag.String("url", "", "the server, e.g. http://127.0.0.1:8000")
	vkey := flag.String("vkey", "", "the log's verifier key")
	oldPath := flag.String("old", "", "a checkpoint saved earlier (signed note)")
	flag.Parse()
	if *base == "" || *vkey == "" || *oldPath == "" {
		flag.Usage()
		os.Exit(2)
	}
	oldNote, err := os.ReadFile(*oldPath)
	if err != nil {
		fmt.Println("FAIL:", err)
		os.Exit(1)
	}
	c := &client{
		base:         strings.TrimRight(*base, "/"),
		tlogBearer:   os.Getenv("TLOG_BEARER"),
		ledgerBearer: os.Getenv("LEDGER_BEARER"),
		http:         &http.Client{Timeout: 30 * time.Second},
	}
	if err := run(c, *vkey, oldNote); err != nil {
		fmt.Println("FAIL:", err)
		os.Exit(1)
	}
	fmt.Println("OK")
}

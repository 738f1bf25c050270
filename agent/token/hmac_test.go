package token

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-deploy/berth/agent/auth"
	"github.com/berth-deploy/berth/agent/config"
)

const testNonce = "nonce-0123456789abcdef"

// signed returns a POST signed by ci-hmac at the fixture's now, and its body.
func (f *fixture) signed(nonce string) (*http.Request, []byte) {
	body := []byte(`{"image":"registry.example.com/app:1.2.3"}`)
	r := httptest.NewRequest(http.MethodPost, "/v1/projects/app/deploy?wait=1", bytes.NewReader(body))
	Sign(r, "ci-hmac", []byte(testSecret), body, f.clock.now(), nonce)
	return r, body
}

func TestHMACAccepts(t *testing.T) {
	f := newFixture(t)
	r, body := f.signed(testNonce)
	p, err := f.v.HMAC(r, body)
	if err != nil {
		t.Fatal(err)
	}
	want := auth.Principal{Identity: "ci-hmac", Method: "hmac", Detail: "nonce " + testNonce, Remote: r.RemoteAddr}
	if p != want {
		t.Fatalf("principal = %+v, want %+v", p, want)
	}
	// The same nonce is another identity's own.
	r2 := httptest.NewRequest(http.MethodGet, "/v1/status", nil)
	Sign(r2, "ci-other", []byte(testSecret2), nil, f.clock.now(), testNonce)
	if p, err := f.v.HMAC(r2, nil); err != nil || p.Identity != "ci-other" {
		t.Fatalf("same nonce, other identity: %+v, %v", p, err)
	}
	// Timestamps just inside the window.
	for i, d := range []time.Duration{-maxClockSkew, maxClockSkew} {
		r := httptest.NewRequest(http.MethodGet, "/v1/status", nil)
		Sign(r, "ci-hmac", []byte(testSecret), nil, f.clock.now().Add(d), fmt.Sprintf("skew-%d-0123456789abcdef", i))
		if _, err := f.v.HMAC(r, nil); err != nil {
			t.Errorf("timestamp %s off: %v", d, err)
		}
	}
}

func TestHMACRejects(t *testing.T) {
	f := newFixture(t)
	now := f.clock.now()
	secret := []byte(testSecret)
	type req struct {
		r    *http.Request
		body []byte
	}
	// signedAt is a request signed by ci-hmac at t with nonce, then edited.
	n := 0
	signedAt := func(at time.Time, nonce string, edit func(r *http.Request, body *[]byte)) req {
		n++
		if nonce == "" {
			nonce = fmt.Sprintf("case-%04d-0123456789", n)
		}
		body := []byte(`{"image":"app:1"}`)
		r := httptest.NewRequest(http.MethodPost, "/v1/projects/app/deploy?wait=1", bytes.NewReader(body))
		Sign(r, "ci-hmac", secret, body, at, nonce)
		if edit != nil {
			edit(r, &body)
		}
		return req{r, body}
	}
	edited := func(edit func(r *http.Request, body *[]byte)) req { return signedAt(now, "", edit) }
	replayed := edited(nil)
	if _, err := f.v.HMAC(replayed.r, replayed.body); err != nil {
		t.Fatalf("first use: %v", err)
	}
	cases := []struct {
		name   string
		req    req
		reason error
	}{
		{"replayed nonce", replayed, errReplayed},
		{"bad signature", edited(func(r *http.Request, _ *[]byte) { r.Header.Set(HeaderSignature, strings.Repeat("ab", 32)) }), errBadSignature},
		{"signature not hex", edited(func(r *http.Request, _ *[]byte) {
			r.Header.Set(HeaderSignature, "zz"+r.Header.Get(HeaderSignature)[2:])
		}), errBadSignature},
		{"signature truncated", edited(func(r *http.Request, _ *[]byte) { r.Header.Set(HeaderSignature, r.Header.Get(HeaderSignature)[:32]) }), errBadSignature},
		{"signed with another secret", edited(func(r *http.Request, body *[]byte) {
			Sign(r, "ci-hmac", []byte(testSecret2), *body, now, r.Header.Get(HeaderNonce))
		}), errBadSignature},
		{"signed with the untrimmed secret", edited(func(r *http.Request, body *[]byte) {
			Sign(r, "ci-hmac", []byte("\n  "+testSecret+"  \n"), *body, now, r.Header.Get(HeaderNonce))
		}), errBadSignature},
		{"body tampered", edited(func(_ *http.Request, body *[]byte) { *body = []byte(`{"image":"evil:1"}`) }), errBadSignature},
		{"body dropped", edited(func(_ *http.Request, body *[]byte) { *body = nil }), errBadSignature},
		{"path tampered", edited(func(r *http.Request, _ *[]byte) { r.URL.Path = "/v1/projects/other/deploy" }), errBadSignature},
		{"query tampered", edited(func(r *http.Request, _ *[]byte) { r.URL.RawQuery = "wait=0" }), errBadSignature},
		{"method tampered", edited(func(r *http.Request, _ *[]byte) { r.Method = http.MethodPut }), errBadSignature},
		{"timestamp header changed", edited(func(r *http.Request, _ *[]byte) {
			r.Header.Set(HeaderTimestamp, fmt.Sprint(now.Unix()+1))
		}), errBadSignature},
		{"nonce header changed", edited(func(r *http.Request, _ *[]byte) { r.Header.Set(HeaderNonce, "other-nonce-0123456789") }), errBadSignature},
		{"identity header changed", edited(func(r *http.Request, _ *[]byte) { r.Header.Set(HeaderIdentity, "ci-other") }), errBadSignature},
		{"timestamp 6 minutes old", signedAt(now.Add(-6*time.Minute), "", nil), errStale},
		{"timestamp 6 minutes ahead", signedAt(now.Add(6*time.Minute), "", nil), errStale},
		{"timestamp far off", signedAt(time.Unix(0, 0), "", nil), errStale},
		{"timestamp 10 minutes old", signedAt(now.Add(-10*time.Minute), "", nil), errStale},
		{"timestamp 10 minutes ahead", signedAt(now.Add(10*time.Minute), "", nil), errStale},
		{"signature missing its first byte", edited(func(r *http.Request, _ *[]byte) { r.Header.Set(HeaderSignature, r.Header.Get(HeaderSignature)[2:]) }), errBadSignature},
		{"signature with a sha256= prefix", edited(func(r *http.Request, _ *[]byte) {
			r.Header.Set(HeaderSignature, "sha256="+r.Header.Get(HeaderSignature))
		}), errBadSignature},
		{"signature of the request with a prefix cut from the path", edited(func(r *http.Request, body *[]byte) {
			other := httptest.NewRequest(http.MethodPost, "/projects/app/deploy?wait=1", nil)
			Sign(other, "ci-hmac", secret, *body, now, r.Header.Get(HeaderNonce))
			r.Header = other.Header.Clone()
		}), errBadSignature},
		{"nonce reused on another request", edited(func(r *http.Request, body *[]byte) {
			*body = []byte(`{"image":"app:2"}`)
			Sign(r, "ci-hmac", secret, *body, now, replayed.r.Header.Get(HeaderNonce))
		}), errReplayed},
		{"signature moved to another path", edited(func(r *http.Request, body *[]byte) {
			other := httptest.NewRequest(http.MethodPost, "/v1/projects/other/deploy?wait=1", nil)
			Sign(other, "ci-hmac", secret, *body, now, r.Header.Get(HeaderNonce))
			r.Header = other.Header.Clone()
		}), errBadSignature},
		{"body swapped with another signed request's", edited(func(r *http.Request, body *[]byte) {
			other := signedAt(now, "", func(o *http.Request, ob *[]byte) {
				*ob = []byte(`{"image":"app:666"}`)
				Sign(o, "ci-hmac", secret, *ob, now, o.Header.Get(HeaderNonce))
			})
			*body = other.body
		}), errBadSignature},
		{"timestamp not a number", edited(func(r *http.Request, _ *[]byte) { r.Header.Set(HeaderTimestamp, "soon") }), errBadTimestamp},
		{"timestamp signed", edited(func(r *http.Request, _ *[]byte) { r.Header.Set(HeaderTimestamp, "+"+r.Header.Get(HeaderTimestamp)) }), errBadTimestamp},
		{"timestamp huge", edited(func(r *http.Request, _ *[]byte) { r.Header.Set(HeaderTimestamp, strings.Repeat("9", 40)) }), errBadTimestamp},
		{"unknown identity", edited(func(r *http.Request, body *[]byte) {
			Sign(r, "nobody", []byte(testSecret), *body, now, r.Header.Get(HeaderNonce))
		}), errNoSecret},
		{"identity without a secret", edited(func(r *http.Request, body *[]byte) {
			Sign(r, "deploy-prod", []byte(testSecret), *body, now, r.Header.Get(HeaderNonce))
		}), errNoSecret},
		{"identity with an empty secret", edited(func(r *http.Request, body *[]byte) {
			Sign(r, "ssh-only", nil, *body, now, r.Header.Get(HeaderNonce))
		}), errNoSecret},
		{"nonce too short", signedAt(now, "short-nonce", nil), errBadNonce},
		{"nonce too long", signedAt(now, strings.Repeat("n", 65), nil), errBadNonce},
		{"nonce with a bad character", signedAt(now, "nonce/0123456789abcdef", nil), errBadNonce},
		{"nonce with a newline", signedAt(now, "nonce\n0123456789abcdef", nil), errBadNonce},
	}
	for _, h := range []string{HeaderIdentity, HeaderTimestamp, HeaderNonce, HeaderSignature} {
		cases = append(cases, struct {
			name   string
			req    req
			reason error
		}{"no " + h, edited(func(r *http.Request, _ *[]byte) { r.Header.Del(h) }), errNoHeaders})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := f.v.HMAC(tc.req.r, tc.req.body)
			if !errors.Is(err, ErrUnauthenticated) || !errors.Is(err, tc.reason) {
				t.Fatalf("error %v, want %v and %v", err, ErrUnauthenticated, tc.reason)
			}
			if errors.Is(err, ErrForbidden) || p != (auth.Principal{}) {
				t.Fatalf("got %+v, %v", p, err)
			}
		})
	}
	if n := f.v.nonces.len(); n != 1 {
		t.Errorf("%d nonces recorded, want only the accepted one", n)
	}
}

// TestHMACByteFlips changes each byte of every signed part of a request
// in turn: the signature, the body, the method and target, and the
// timestamp, nonce and identity headers. Each change is refused, and none
// is recorded.
func TestHMACByteFlips(t *testing.T) {
	f := newFixture(t)
	type mutation struct {
		what string
		edit func(r *http.Request, body []byte) []byte
	}
	r0, body0 := f.signed(testNonce)
	var muts []mutation
	// other returns a byte of the same kind as c (hex digit, nonce or
	// digit), so the flip passes every check but the signature's.
	other := func(c byte) byte {
		switch {
		case c == '9':
			return '8'
		case '0' <= c && c <= '9':
			return c + 1
		case c == 'f' || c == 'z':
			return 'a'
		case 'a' <= c && c < 'z':
			return c + 1
		}
		return 'x'
	}
	flipHeader := func(h string) {
		v := r0.Header.Get(h)
		for i := range len(v) {
			muts = append(muts, mutation{fmt.Sprintf("%s byte %d", h, i), func(r *http.Request, body []byte) []byte {
				b := []byte(v)
				b[i] = other(b[i])
				r.Header.Set(h, string(b))
				return body
			}})
		}
	}
	flipHeader(HeaderSignature)
	flipHeader(HeaderNonce)
	flipHeader(HeaderTimestamp)
	for i := range len(body0) {
		muts = append(muts, mutation{fmt.Sprintf("body byte %d", i), func(r *http.Request, body []byte) []byte {
			b := bytes.Clone(body)
			b[i] ^= 0x01
			return b
		}})
	}
	uri := r0.URL.RequestURI()
	for i := 1; i < len(uri); i++ { // a target starts with its slash

		muts = append(muts, mutation{fmt.Sprintf("target byte %d", i), func(r *http.Request, body []byte) []byte {
			b := []byte(uri)
			b[i] = other(b[i])
			u, err := url.ParseRequestURI(string(b))
			if err != nil {
				t.Fatal(err)
			}
			r.URL = u
			return body
		}})
	}
	muts = append(muts,
		mutation{"method byte 0", func(r *http.Request, body []byte) []byte { r.Method = "PUT"; return body }},
		mutation{"identity", func(r *http.Request, body []byte) []byte { r.Header.Set(HeaderIdentity, "ci-other"); return body }},
		mutation{"body byte appended", func(r *http.Request, body []byte) []byte { return append(bytes.Clone(body), ' ') }},
		mutation{"body byte dropped", func(r *http.Request, body []byte) []byte { return body[:len(body)-1] }},
	)
	for _, m := range muts {
		r, body := f.signed(testNonce)
		body = m.edit(r, body)
		if p, err := f.v.HMAC(r, body); !errors.Is(err, ErrUnauthenticated) || p != (auth.Principal{}) {
			t.Errorf("%s: %+v, %v", m.what, p, err)
		} else if errors.Is(err, errReplayed) {
			t.Errorf("%s: refused as a replay, so something was recorded: %v", m.what, err)
		}
	}
	if n := f.v.nonces.len(); n != 0 {
		t.Errorf("%d nonces recorded by %d refused requests", n, len(muts))
	}
	t.Logf("%d single-byte changes refused", len(muts))
	// The unchanged request still passes: nothing above spent its nonce.
	if _, err := f.v.HMAC(r0, body0); err != nil {
		t.Fatalf("the untouched request: %v", err)
	}
}

func TestHMACNonceMemory(t *testing.T) {
	f := newFixture(t)
	f.v.nonces.max = 2
	use := func(nonce string) error {
		r, body := f.signed(nonce)
		_, err := f.v.HMAC(r, body)
		return err
	}
	first, body := f.signed("first-0123456789abcdef")
	if _, err := f.v.HMAC(first, body); err != nil {
		t.Fatal(err)
	}
	if err := use("second-0123456789abcdef"); err != nil {
		t.Fatal(err)
	}
	// At the edge of the window the first request would still pass, so its
	// nonce is still remembered: the identity's store is full.
	f.clock.advance(maxClockSkew)
	if _, err := f.v.HMAC(first, body); !errors.Is(err, errReplayed) {
		t.Fatalf("replay at the edge of the window: %v", err)
	}
	if err := use("first-0123456789abcdef"); !errors.Is(err, errReplayed) {
		t.Fatalf("nonce reused at the edge of the window: %v", err)
	}
	if err := use("third-0123456789abcdef"); !errors.Is(err, ErrUnauthenticated) || !errors.Is(err, errSeenFull) {
		t.Fatalf("store full: %v", err)
	}
	// A second later the first request is stale, and its nonce forgotten.
	f.clock.advance(time.Second)
	if _, err := f.v.HMAC(first, body); !errors.Is(err, errStale) {
		t.Fatalf("replay after the window: %v", err)
	}
	for _, n := range []string{"third-0123456789abcdef", "first-0123456789abcdef"} {
		if err := use(n); err != nil {
			t.Fatalf("%s after the window: %v", n, err)
		}
	}
}

func TestHMACConcurrentReplay(t *testing.T) {
	f := newFixture(t)
	var (
		wg sync.WaitGroup
		mu sync.Mutex
		ok int
	)
	for range 20 {
		r, body := f.signed(testNonce)
		wg.Go(func() {
			_, err := f.v.HMAC(r, body)
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				ok++
			} else if !errors.Is(err, errReplayed) {
				t.Errorf("unexpected: %v", err)
			}
		})
	}
	wg.Wait()
	if ok != 1 {
		t.Fatalf("%d of 20 uses accepted, want 1", ok)
	}
}

// TestHMACOverHTTP signs client requests and verifies them as a server
// receives them, escaped paths and queries included.
func TestHMACOverHTTP(t *testing.T) {
	f := newFixture(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		p, err := f.v.HMAC(r, body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		fmt.Fprint(w, p.Identity)
	}))
	defer srv.Close()
	for i, target := range []string{
		"/v1/status",
		"/v1/projects/app/deploy?wait=1&tag=v1.2%2B3",
		"/v1/projects/a%2Fb/history?x=%20y",
		"/v1/projects/caf%C3%A9?",
	} {
		body := []byte(fmt.Sprintf(`{"n":%d}`, i))
		req, err := http.NewRequest(http.MethodPost, srv.URL+target, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		Sign(req, "ci-hmac", []byte(testSecret), body, f.clock.now(), fmt.Sprintf("http-%d-0123456789abcdef", i))
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(got) != "ci-hmac" {
			t.Errorf("%s: %s %s", target, resp.Status, got)
		}
	}
}

func TestNewHMACSecrets(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "short"), []byte("  too short  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, file := range map[string]string{
		"missing file": filepath.Join(dir, "nope"),
		"short secret": filepath.Join(dir, "short"),
	} {
		ids, err := auth.New([]config.Identity{{Name: "ci", HMACSecretFile: file}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := New(nil, ids, nil, nil); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

package apiserver

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation/field"

	spawnerv1 "spawner.dev/apis/spawner/v1"
)

func TestParseSpawn(t *testing.T) {
	big := `{"image":"demo","env":{"A":"` + strings.Repeat("x", MaxSpawnBody) + `"}}`
	cases := []struct {
		name, body string
		status     int // 0 = accepted
		contains   string
	}{
		{"minimal", `{"image":"localhost/spawner-demo:dev"}`, 0, ""},
		{"full", `{"image":"ghcr.io/a/b:1.2@sha256:` + strings.Repeat("a", 64) + `","port":3000,"env":{"FOO":"bar","_X1":""},
			"gracePeriodSeconds":0,"key":"room/42","maxLifetimeSeconds":3600,"args":["--x","y"],
			"resources":{"requests":{"cpu":"100m","memory":"64Mi"},"limits":{"cpu":"1","memory":"128Mi","nvidia.com/gpu":"1"}},
			"labels":{"team":"a","example.com/tier":"x"}}`, 0, ""},
		{"docker hub short", `{"image":"nginx"}`, 0, ""},
		{"empty body", ``, 400, "invalid JSON"},
		{"not json", `image=x`, 400, "invalid JSON"},
		{"two values", `{"image":"nginx"}{"image":"nginx"}`, 400, "more than one"},
		{"unknown field", `{"image":"nginx","imag":"x"}`, 400, "unknown field"},
		{"array", `[]`, 400, "invalid JSON"},
		{"too large", big, 413, "larger than"},
		{"no image", `{}`, 422, "image"},
		{"bad image", `{"image":"nginx/UPPER"}`, 422, "image"},
		{"bad image chars", `{"image":"a b"}`, 422, "image"},
		{"image spaces", `{"image":" nginx"}`, 422, "image"},
		{"port zero means default", `{"image":"nginx","port":0}`, 0, ""},
		{"port too big", `{"image":"nginx","port":70000}`, 422, "port"},
		{"port negative", `{"image":"nginx","port":-1}`, 422, "port"},
		{"port float", `{"image":"nginx","port":1.5}`, 400, "invalid JSON"},
		{"port sidecar", `{"image":"nginx","port":9090}`, 422, "sidecar"},
		{"port status", `{"image":"nginx","port":9091}`, 422, "sidecar"},
		{"env bad name", `{"image":"nginx","env":{"1A":"x"}}`, 422, "env"},
		{"env PORT", `{"image":"nginx","env":{"PORT":"1"}}`, 422, "PORT"},
		{"grace negative", `{"image":"nginx","gracePeriodSeconds":-5}`, 422, "gracePeriodSeconds"},
		{"lifetime zero", `{"image":"nginx","maxLifetimeSeconds":0}`, 422, "maxLifetimeSeconds"},
		{"key long", `{"image":"nginx","key":"` + strings.Repeat("k", 254) + `"}`, 422, "key"},
		{"key control", `{"image":"nginx","key":"a\u0000b"}`, 422, "key"},
		{"bad quantity", `{"image":"nginx","resources":{"requests":{"cpu":"lots"}}}`, 422, "quantity"},
		{"negative quantity", `{"image":"nginx","resources":{"limits":{"memory":"-1Mi"}}}`, 422, "negative"},
		{"bad resource", `{"image":"nginx","resources":{"limits":{"pods":"1"}}}`, 422, "resources"},
		{"request over limit", `{"image":"nginx","resources":{"requests":{"cpu":"2"},"limits":{"cpu":"1"}}}`, 422, "limit"},
		{"unknown resources field", `{"image":"nginx","resources":{"request":{"cpu":"2"}}}`, 400, "unknown field"},
		{"reserved label", `{"image":"nginx","labels":{"spawner.dev/key-hash":"x"}}`, 422, "reserved"},
		{"managed-by label", `{"image":"nginx","labels":{"app.kubernetes.io/managed-by":"me"}}`, 422, "reserved"},
		{"bad label value", `{"image":"nginx","labels":{"a":"not ok!"}}`, 422, "labels"},
		{"idle policy", `{"image":"nginx","idlePolicy":{"wsIdleSeconds":30,"countRequests":false}}`, 0, ""},
		{"ws idle negative", `{"image":"nginx","idlePolicy":{"wsIdleSeconds":-1}}`, 422, "idlePolicy.wsIdleSeconds"},
		{"ws idle too long", `{"image":"nginx","idlePolicy":{"wsIdleSeconds":86401}}`, 422, "idlePolicy.wsIdleSeconds"},
		{"ws idle huge", `{"image":"nginx","idlePolicy":{"wsIdleSeconds":10000000000}}`, 422, "idlePolicy.wsIdleSeconds"},
		{"ws idle not a number", `{"image":"nginx","idlePolicy":{"wsIdleSeconds":"30"}}`, 400, "invalid JSON"},
		{"count requests not a bool", `{"image":"nginx","idlePolicy":{"countRequests":"no"}}`, 400, "invalid JSON"},
		{"unknown idle policy field", `{"image":"nginx","idlePolicy":{"wsIdle":30}}`, 400, "unknown field"},
		{"invalid utf8", "{\"image\":\"nginx\",\"key\":\"\xff\"}", 400, "UTF-8"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, slab, err := parseSpawn(strings.NewReader(c.body), "ns", "salt", strings.Repeat("0", 64))
			if c.status == 0 {
				if err != nil {
					t.Fatalf("rejected: %d %s", err.status, err.msg)
				}
				if errs := spawnerv1.ValidateSpec(&slab.Spec, field.NewPath("spec")); len(errs) > 0 {
					t.Fatal(errs)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted, want %d", c.status)
			}
			if err.status != c.status || !strings.Contains(err.msg, c.contains) {
				t.Fatalf("got %d %q, want %d containing %q", err.status, err.msg, c.status, c.contains)
			}
		})
	}
}

func TestBuildSlab(t *testing.T) {
	body := `{"image":"localhost/spawner-demo:dev","port":3000,"env":{"B":"2","A":"1"},"key":"doc-1","args":["x"],
		"gracePeriodSeconds":30,"maxLifetimeSeconds":600,"labels":{"team":"t"},"resources":{"limits":{"memory":"64Mi"}}}`
	_, slab, err := parseSpawn(strings.NewReader(body), "ns", "salt1", "hash1")
	if err != nil {
		t.Fatal(err.msg)
	}
	c := slab.Spec.Template.Containers[0]
	if c.Name != "app" || c.Image != "localhost/spawner-demo:dev" || len(c.Args) != 1 {
		t.Fatalf("container %+v", c)
	}
	if c.Env[0].Name != "A" || c.Env[1].Name != "B" {
		t.Fatalf("env not sorted: %+v", c.Env)
	}
	if c.Resources.Limits.Memory().String() != "64Mi" {
		t.Fatalf("limits %v", c.Resources.Limits)
	}
	if slab.Spec.HTTPPort != 3000 || *slab.Spec.GracePeriodSeconds != 30 || *slab.Spec.MaxLifetimeSeconds != 600 || slab.Spec.Key != "doc-1" {
		t.Fatalf("spec %+v", slab.Spec)
	}
	if slab.Labels[spawnerv1.LabelKeyHash] != keyHashLabel("doc-1") || len(keyHashLabel("doc-1")) != 32 || slab.Labels["team"] != "t" {
		t.Fatalf("labels %v", slab.Labels)
	}
	if slab.Spec.Template.Metadata.Labels["team"] != "t" {
		t.Fatalf("pod labels %v", slab.Spec.Template.Metadata.Labels)
	}
	if slab.Annotations[spawnerv1.AnnotationAccessTokenHash] != "hash1" || slab.Annotations[spawnerv1.AnnotationAccessTokenSalt] != "salt1" {
		t.Fatalf("annotations %v", slab.Annotations)
	}
	// The idle policy reaches the spec.
	_, slab, _ = parseSpawn(strings.NewReader(`{"image":"nginx","idlePolicy":{"wsIdleSeconds":30,"countRequests":false}}`), "ns", "s", "h")
	if p := slab.Spec.IdlePolicy; p == nil || p.WSIdleSeconds != 30 || p.CountRequests == nil || *p.CountRequests {
		t.Fatalf("idle policy %+v", p)
	}
	// Defaults.
	_, slab, _ = parseSpawn(strings.NewReader(`{"image":"nginx"}`), "ns", "s", "h")
	if slab.Spec.HTTPPort != 8080 || *slab.Spec.GracePeriodSeconds != 300 || slab.Spec.MaxLifetimeSeconds != nil || slab.Labels[spawnerv1.LabelKeyHash] != "" || slab.Spec.IdlePolicy != nil {
		t.Fatalf("defaults %+v %v", slab.Spec, slab.Labels)
	}
}

func TestKeyedNames(t *testing.T) {
	n := keyedName("room", 3)
	if !strings.HasPrefix(n, "k-") || len(n) != len("k-")+16+len("-3") {
		t.Fatal(n)
	}
	if generationOf(n, "room") != 3 || generationOf(n, "other") != 0 || generationOf("slab-abc", "room") != 0 {
		t.Fatal("generationOf")
	}
}

func TestAccessTokens(t *testing.T) {
	k := &accessKeys{key: []byte("0123456789abcdef")}
	salt := newSalt()
	tok := k.token(salt)
	if len(tok) != 22 || tok != k.token(salt) || tok == k.token(newSalt()) {
		t.Fatalf("token %q not deterministic per salt or not 128 bits", tok)
	}
	if (&accessKeys{key: []byte("another key 1234")}).token(salt) == tok {
		t.Fatal("token does not depend on the key")
	}
	slab := &spawnerv1.SessionLivedBackend{}
	slab.Annotations = map[string]string{spawnerv1.AnnotationAccessTokenHash: hashToken(tok), spawnerv1.AnnotationAccessTokenSalt: salt}
	if !tokenMatches(slab, tok) || tokenMatches(slab, tok+"x") || tokenMatches(slab, "") {
		t.Fatal("tokenMatches")
	}
	if got, ok := k.tokenFor(slab); !ok || got != tok {
		t.Fatal("tokenFor")
	}
	slab.Annotations[spawnerv1.AnnotationAccessTokenHash] = "nothex"
	if tokenMatches(slab, tok) {
		t.Fatal("malformed hash accepted")
	}
}

func TestBearerTokens(t *testing.T) {
	var b bearerTokens
	if b.valid("x") {
		t.Fatal("empty set accepts")
	}
	b.store(parseTokens([]byte("  one \n\n# two\nthree\n")))
	for tok, want := range map[string]bool{"one": true, "three": true, "two": false, "# two": false, "": false, "one ": false, "on": false} {
		if b.valid(tok) != want {
			t.Errorf("valid(%q) = %v", tok, !want)
		}
	}
}

func TestCredentialsFromFiles(t *testing.T) {
	dir := t.TempDir()
	tf, kf := filepath.Join(dir, "tokens"), filepath.Join(dir, "key")
	tokA, tokB := strings.Repeat("a", MinSecretBytes), strings.Repeat("b", MinSecretBytes+12)
	os.WriteFile(tf, []byte(tokA+"\n"+tokB+"\n"), 0o600)
	os.WriteFile(kf, []byte("a-key-of-enough-length-0123456789\n"), 0o600)
	cfg := &Config{TokenFile: tf, AccessKeyFile: kf}
	c := &credentials{cfg: cfg, log: discardLogger()}
	if err := c.init(t.Context()); err != nil {
		t.Fatal(err)
	}
	if !c.tokens.valid(tokB) || string(c.access.key) != "a-key-of-enough-length-0123456789" {
		t.Fatal("not loaded")
	}
	os.WriteFile(kf, []byte("short"), 0o600)
	if err := (&credentials{cfg: cfg, log: discardLogger()}).init(t.Context()); err == nil {
		t.Fatal("short key accepted")
	}
	os.WriteFile(tf, []byte("# none\n"), 0o600)
	if err := (&credentials{cfg: cfg, log: discardLogger()}).init(t.Context()); err == nil {
		t.Fatal("empty token file accepted")
	}
}

// TestCredentialsRefused: every way the api-server refuses its credentials,
// each with an error that says what to do and never repeats the secret.
func TestCredentialsRefused(t *testing.T) {
	// The values deploy/api-server/secret.yaml carried (commit 4546159),
	// rebuilt from pieces so that a grep for them finds only the hashes.
	oldToken := "dev-HKeG6aGYOrJJ" + "WHD9kOW-oNV1ZUvgMt1Z"
	oldKey := "2b8196bcb9015021632748" + "1fa8ddfd0a042aa6007ed82b9ca3afc700d96e535d"
	good := strings.Repeat("g", MinSecretBytes)
	for _, tc := range []struct {
		name        string
		tokens, key *string // nil: file absent
		want        string
	}{
		{"no token file", nil, &good, "does not exist"},
		{"no tokens in the file", ptr("# none\n"), &good, "no control API token"},
		{"short token", ptr(good + "\n" + strings.Repeat("s", MinSecretBytes-1) + "\n"), &good, "line 2"},
		{"committed token", ptr(oldToken + "\n"), &good, "published in spawner's repository"},
		{"no key file", &good, nil, "does not exist"},
		{"short key", &good, ptr(strings.Repeat("k", MinSecretBytes-1)), "shorter than 32"},
		{"committed key", &good, ptr(oldKey + "\n"), "published in spawner's repository"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := &Config{TokenFile: filepath.Join(dir, "token"), AccessKeyFile: filepath.Join(dir, "access-token-key")}
			if tc.tokens != nil {
				os.WriteFile(cfg.TokenFile, []byte(*tc.tokens), 0o600)
			}
			if tc.key != nil {
				os.WriteFile(cfg.AccessKeyFile, []byte(*tc.key), 0o600)
			}
			err := (&credentials{cfg: cfg, log: discardLogger()}).init(t.Context())
			if err == nil {
				t.Fatal("accepted")
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.want) || !strings.Contains(msg, "openssl rand") {
				t.Errorf("error %q: want it to contain %q and the openssl recipe", msg, tc.want)
			}
			if strings.Contains(msg, oldToken) || strings.Contains(msg, oldKey) || strings.Contains(msg, strings.Repeat("s", MinSecretBytes-1)) {
				t.Errorf("error %q repeats the secret", msg)
			}
		})
	}
}

// TestTokenReloadKeepsStrongSet: a rotation to a weak token is refused and
// the previous tokens stay valid.
func TestTokenReloadKeepsStrongSet(t *testing.T) {
	dir := t.TempDir()
	tf := filepath.Join(dir, "token")
	good := strings.Repeat("g", MinSecretBytes)
	os.WriteFile(tf, []byte(good), 0o600)
	c := &credentials{cfg: &Config{TokenFile: tf}, log: discardLogger()}
	if err := c.loadTokens(t.Context()); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(tf, []byte("weak"), 0o600)
	if err := c.loadTokens(t.Context()); err == nil {
		t.Fatal("weak token accepted on reload")
	}
	if !c.tokens.valid(good) || c.tokens.valid("weak") {
		t.Error("the reload changed the token set")
	}
}

func ptr(s string) *string { return &s }

func TestControlAuth(t *testing.T) {
	e := newTestEnv(t, "")
	tok := e.addBackend("slab-auth", "Running")
	for _, c := range []struct {
		method, path, auth string
		want               int
	}{
		{"POST", "/spawn", "", 401},
		{"POST", "/spawn", "Bearer wrong", 401},
		{"POST", "/spawn", "Basic " + testToken, 401},
		{"GET", "/backends", "Bearer " + testToken, 200},
		{"GET", "/backends", "bearer second-token", 200},
		{"GET", "/backend/slab-auth/status", "", 401},
		{"GET", "/backend/slab-auth/status?spawner_token=" + tok, "", 200},
		{"GET", "/backend/slab-auth/status?spawner_token=wrong", "", 401},
		{"POST", "/backend/slab-auth/terminate?spawner_token=" + tok, "", 401}, // the access token is read-only
		{"GET", "/healthz", "", 200},
		{"GET", "/readyz", "", 200},
		{"GET", "/metrics", "", 200},
	} {
		req, _ := http.NewRequest(c.method, e.control.URL+c.path, bytes.NewReader(nil))
		if c.auth != "" {
			req.Header.Set("Authorization", c.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body := readBody(t, resp)
		if resp.StatusCode != c.want {
			t.Errorf("%s %s (%q): %d %s, want %d", c.method, c.path, c.auth, resp.StatusCode, body, c.want)
		}
		if c.want == 401 && !strings.Contains(body, `"error"`) {
			t.Errorf("401 body is not a JSON error: %s", body)
		}
	}
}

// TestUnroutedRequests: a known path with the wrong method is 405 with
// Allow, anything else 404, both JSON, on the control API and the router.
func TestUnroutedRequests(t *testing.T) {
	e := newTestEnv(t, "")
	for _, c := range []struct {
		base, method, path string
		want               int
		allow              string
	}{
		{e.control.URL, "GET", "/spawn", 405, "POST"},
		{e.control.URL, "DELETE", "/backend/slab-x/status", 405, "GET, HEAD"},
		{e.control.URL, "PUT", "/backend/slab-x/terminate", 405, "POST"},
		{e.control.URL, "POST", "/healthz", 405, "GET, HEAD"},
		{e.control.URL, "GET", "/nope", 404, ""},
		{e.control.URL, "GET", "/backend/slab-x/nope", 404, ""},
		{e.router.URL, "POST", "/metrics", 405, "GET, HEAD"},
		{e.router.URL, "GET", "/spawn", 404, ""},
	} {
		req, _ := http.NewRequest(c.method, c.base+c.path, nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body := readBody(t, resp)
		if resp.StatusCode != c.want || resp.Header.Get("Allow") != c.allow ||
			resp.Header.Get("Content-Type") != "application/json" || !strings.Contains(body, `"error"`) {
			t.Errorf("%s %s: %d Allow %q %s, want %d Allow %q with a JSON error",
				c.method, c.path, resp.StatusCode, resp.Header.Get("Allow"), body, c.want, c.allow)
		}
	}
}

// FuzzSpawnBody: no body makes the decoder or validator panic or answer 5xx,
// and every accepted body yields a spec the CRD rules accept.
func FuzzSpawnBody(f *testing.F) {
	for _, s := range []string{
		`{"image":"nginx"}`, `{"image":"localhost/spawner-demo:dev","port":3000,"env":{"A":"b"},"key":"k"}`,
		`{"image":"a","resources":{"requests":{"cpu":"1"},"limits":{"cpu":"500m"}}}`, `{"image":"a","labels":{"x/y":"z"}}`,
		`{"image":"a","args":["1"],"gracePeriodSeconds":1,"maxLifetimeSeconds":2}`, `{}`, `[]`, `null`, `{"image":null}`,
		`{"port":1e99}`, `{"env":{"":""}}`, `{"image":"a@sha256:abc"}`, `{"resources":{"limits":{"cpu":"1e1000"}}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		_, slab, err := parseSpawn(bytes.NewReader(body), "ns", "s", "h")
		if err != nil {
			if err.status < 400 || err.status >= 500 {
				t.Fatalf("status %d for %q", err.status, body)
			}
			return
		}
		if errs := spawnerv1.ValidateSpec(&slab.Spec, field.NewPath("spec")); len(errs) > 0 {
			t.Fatalf("accepted %q but spec invalid: %v", body, errs)
		}
	})
}

package probe

import (
	"bufio"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"spawner.dev/common/wire"
)

func TestRunReportsEachURL(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Header.Get(wire.HeaderRouterProof) != "":
			w.WriteHeader(http.StatusTeapot)
		case r.Header.Get("Upgrade") == "websocket":
			w.WriteHeader(http.StatusForbidden)
		}
	}))
	defer srv.Close()
	var out strings.Builder
	if err := Run(&out, []string{srv.URL + "/", "upgrade:" + srv.URL + "/ws", "forged:upgrade:" + srv.URL, "http://127.0.0.1:1/"}); err != nil {
		t.Fatal(err)
	}
	var got []Result
	sc := bufio.NewScanner(strings.NewReader(out.String()))
	for sc.Scan() {
		var r Result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		got = append(got, r)
	}
	if len(got) != 4 || got[0].Status != 200 || got[1].Status != 403 || !got[1].Upgrade || got[2].Status != 418 || !got[2].Forged ||
		got[3].Status != 0 || got[3].Error == "" {
		t.Fatalf("%+v", got)
	}
}

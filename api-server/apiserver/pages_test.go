package apiserver

import (
	"net/http/httptest"
	"strings"
	"testing"

	"spawner.dev/apis/lifecycle"
)

// The waiting page's script learns the phase names from apis/lifecycle: it
// reloads on Ready and stops listening on every ending phase and on Deleted.
func TestWaitingPageNamesThePhasesOfTheLifecycle(t *testing.T) {
	w := httptest.NewRecorder()
	writePage(w, 409, awaitingControlPage, "b", StatusResponse{State: string(lifecycle.Pending)})
	page := w.Body.String()
	if !strings.Contains(page, `st.state === "Ready"`) {
		t.Errorf("the page does not reload on Ready:\n%s", page)
	}
	want := `["Swept","Terminating","Failed","Deleted"].indexOf(st.state)`
	if !strings.Contains(page, want) {
		t.Errorf("the page does not stop on the ending states %s:\n%s", want, page)
	}
}

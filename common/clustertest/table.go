package clustertest

import (
	"context"
	"encoding/json"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Table is what `kubectl get` prints for a spawner.dev/v1 resource
// ("sessionlivedbackends", "backendpools") in namespace ns: the server-side
// Table kubectl asks for, as column names and rows of cells (JSON numbers
// are float64). With a name, the one object; without, all of them.
func Table(t testing.TB, kube kubernetes.Interface, ns, resource, name string) (columns []string, rows [][]any) {
	t.Helper()
	path := []string{"/apis/spawner.dev/v1/namespaces", ns, resource}
	if name != "" {
		path = append(path, name)
	}
	raw, err := kube.CoreV1().RESTClient().Get().AbsPath(path...).
		SetHeader("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io").DoRaw(context.Background())
	if err != nil {
		t.Fatalf("kubectl get %s: %v", resource, err)
	}
	var table metav1.Table
	if err := json.Unmarshal(raw, &table); err != nil {
		t.Fatalf("kubectl get %s: %v", resource, err)
	}
	for _, c := range table.ColumnDefinitions {
		columns = append(columns, c.Name)
	}
	for _, r := range table.Rows {
		rows = append(rows, r.Cells)
	}
	return columns, rows
}

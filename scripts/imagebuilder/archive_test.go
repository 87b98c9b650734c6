package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func readTar(t *testing.T, b []byte) map[string]*tarEntry {
	t.Helper()
	out := map[string]*tarEntry{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("reading tar: %v", err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out[h.Name] = &tarEntry{hdr: h, data: data}
	}
}

type tarEntry struct {
	hdr  *tar.Header
	data []byte
}

func digest(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func build(t *testing.T, s Spec) ([]byte, Result) {
	t.Helper()
	var buf bytes.Buffer
	res, err := Build(s, &buf)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	return buf.Bytes(), res
}

func fakeBinary(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "spawner-demo")
	if err := os.WriteFile(p, []byte("\x7fELF not really a binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestArchiveDigestsAndContents(t *testing.T) {
	bin := fakeBinary(t)
	archive, res := build(t, Spec{
		Binary: bin, Tag: "localhost/spawner-demo:dev", UID: NonRootUID, Arch: "amd64",
		Labels:     map[string]string{"org.opencontainers.image.title": "spawner-demo"},
		Args:       []string{"--port=8080"},
		ExposedTCP: []int{8080},
	})
	files := readTar(t, archive)

	m, ok := files["manifest.json"]
	if !ok {
		t.Fatal("archive has no manifest.json")
	}
	var manifest []manifestEntry
	if err := json.Unmarshal(m.data, &manifest); err != nil {
		t.Fatalf("manifest.json: %v", err)
	}
	if len(manifest) != 1 || len(manifest[0].Layers) != 1 {
		t.Fatalf("want one image with one layer, got %+v", manifest)
	}
	if got := manifest[0].RepoTags; len(got) != 1 || got[0] != "localhost/spawner-demo:dev" {
		t.Fatalf("RepoTags = %v", got)
	}

	cfgEntry, ok := files[manifest[0].Config]
	if !ok {
		t.Fatalf("config %s named in manifest.json is missing", manifest[0].Config)
	}
	if want := digest(cfgEntry.data) + ".json"; manifest[0].Config != want {
		t.Fatalf("config file %s does not match its content digest %s", manifest[0].Config, want)
	}
	if res.ConfigDigest != "sha256:"+strings.TrimSuffix(manifest[0].Config, ".json") {
		t.Fatalf("Result.ConfigDigest %s does not match manifest %s", res.ConfigDigest, manifest[0].Config)
	}

	layerEntry, ok := files[manifest[0].Layers[0]]
	if !ok {
		t.Fatalf("layer %s named in manifest.json is missing", manifest[0].Layers[0])
	}
	layerDigest := "sha256:" + digest(layerEntry.data)
	var cfg imageConfig
	if err := json.Unmarshal(cfgEntry.data, &cfg); err != nil {
		t.Fatalf("config: %v", err)
	}
	if len(cfg.RootFS.DiffIDs) != 1 || cfg.RootFS.DiffIDs[0] != layerDigest || res.LayerDiffID != layerDigest {
		t.Fatalf("diff_ids %v / result %s do not match layer digest %s", cfg.RootFS.DiffIDs, res.LayerDiffID, layerDigest)
	}
	if dir := strings.TrimSuffix(manifest[0].Layers[0], "/layer.tar"); "sha256:"+dir != layerDigest {
		t.Fatalf("layer directory %s is not named after its diff id %s", dir, layerDigest)
	}

	if cfg.OS != "linux" || cfg.Architecture != "amd64" || cfg.RootFS.Type != "layers" {
		t.Fatalf("bad platform/rootfs: %+v", cfg)
	}
	if cfg.Config.User != "65532:65532" {
		t.Fatalf("User = %q, want the non-root 65532:65532", cfg.Config.User)
	}
	if len(cfg.Config.Entrypoint) != 1 || cfg.Config.Entrypoint[0] != "/spawner-demo" {
		t.Fatalf("Entrypoint = %v", cfg.Config.Entrypoint)
	}
	if len(cfg.Config.Cmd) != 1 || cfg.Config.Cmd[0] != "--port=8080" {
		t.Fatalf("Cmd = %v", cfg.Config.Cmd)
	}
	if cfg.Config.Labels["org.opencontainers.image.title"] != "spawner-demo" {
		t.Fatalf("Labels = %v", cfg.Config.Labels)
	}
	if _, ok := cfg.Config.ExposedPorts["8080/tcp"]; !ok {
		t.Fatalf("ExposedPorts = %v", cfg.Config.ExposedPorts)
	}

	layer := readTar(t, layerEntry.data)
	b, ok := layer["spawner-demo"]
	if !ok || b.hdr.Mode != 0o755 || string(b.data) != "\x7fELF not really a binary" {
		t.Fatalf("binary missing or wrong in layer: %+v", b)
	}
	if p, ok := layer["etc/passwd"]; !ok || !strings.Contains(string(p.data), "nonroot:x:65532:65532:") {
		t.Fatalf("etc/passwd missing the nonroot user")
	}
	if tmp, ok := layer["tmp/"]; !ok || tmp.hdr.Typeflag != tar.TypeDir || tmp.hdr.Mode != 0o1777 {
		t.Fatalf("tmp/ missing or not 1777: %+v", tmp)
	}
	for name, e := range layer {
		if e.hdr.Uid != 0 || e.hdr.Gid != 0 || !e.hdr.ModTime.Equal(epoch) {
			t.Fatalf("%s: want root-owned, epoch mtime; got uid=%d gid=%d mtime=%v", name, e.hdr.Uid, e.hdr.Gid, e.hdr.ModTime)
		}
	}
}

func TestDeterministic(t *testing.T) {
	bin := fakeBinary(t)
	s := Spec{Binary: bin, Tag: "localhost/x:dev", UID: NonRootUID, Labels: map[string]string{"a": "1", "b": "2"}}
	a, ra := build(t, s)
	b, rb := build(t, s)
	if !bytes.Equal(a, b) || ra != rb {
		t.Fatal("two builds of the same input differ")
	}
}

func TestValidation(t *testing.T) {
	bin := fakeBinary(t)
	for _, s := range []Spec{
		{Tag: "localhost/x:dev"},
		{Binary: bin, Tag: "localhost/x"},
		{Binary: bin, Tag: "localhost/x:dev", Name: "a/b"},
		{Binary: filepath.Join(t.TempDir(), "missing"), Tag: "localhost/x:dev"},
	} {
		if _, err := Build(s, io.Discard); err == nil {
			t.Errorf("Build(%+v) succeeded, want an error", s)
		}
	}
}

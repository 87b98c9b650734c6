package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"
)

// NonRootUID is the uid/gid of the unprivileged user every image runs as by default
// (the same value distroless uses for "nonroot").
const NonRootUID = 65532

// epoch is the fixed timestamp used for every file and for the image config, so that the
// same binary always yields byte-identical archives (and therefore identical image IDs).
var epoch = time.Unix(0, 0).UTC()

// Spec describes a FROM-scratch-like image holding one static binary.
type Spec struct {
	Binary     string            // path of the static binary on disk
	Name       string            // file name inside the image (default: base name of Binary), placed at /<Name>
	Tag        string            // repository:tag written into manifest.json, e.g. localhost/spawner-pause:dev
	UID        int               // user the entrypoint runs as
	Args       []string          // extra entrypoint arguments (Cmd)
	Env        []string          // extra environment variables (KEY=VALUE)
	Labels     map[string]string // image config labels (OCI annotations such as org.opencontainers.image.title)
	Arch       string            // GOARCH-style architecture, e.g. amd64
	ExposedTCP []int             // ports recorded as ExposedPorts (documentation only)
}

// imageConfig is the subset of the OCI/Docker image config that we write.
type imageConfig struct {
	Architecture string          `json:"architecture"`
	OS           string          `json:"os"`
	Created      string          `json:"created"`
	Config       containerConfig `json:"config"`
	RootFS       rootFS          `json:"rootfs"`
	History      []history       `json:"history"`
}

type containerConfig struct {
	User         string              `json:"User"`
	Env          []string            `json:"Env"`
	Entrypoint   []string            `json:"Entrypoint"`
	Cmd          []string            `json:"Cmd,omitempty"`
	WorkingDir   string              `json:"WorkingDir"`
	Labels       map[string]string   `json:"Labels,omitempty"`
	ExposedPorts map[string]struct{} `json:"ExposedPorts,omitempty"`
}

type rootFS struct {
	Type    string   `json:"type"`
	DiffIDs []string `json:"diff_ids"`
}

type history struct {
	Created   string `json:"created"`
	CreatedBy string `json:"created_by"`
}

// manifestEntry is one element of a docker-archive manifest.json.
type manifestEntry struct {
	Config   string   `json:"Config"`
	RepoTags []string `json:"RepoTags"`
	Layers   []string `json:"Layers"`
}

// Result reports the digests of what was written.
type Result struct {
	ConfigDigest string // sha256:<hex> of the config blob = image ID
	LayerDiffID  string // sha256:<hex> of the uncompressed layer tar
}

func (s *Spec) validate() error {
	if s.Binary == "" {
		return fmt.Errorf("no binary given")
	}
	if s.Tag == "" || !strings.Contains(path.Base(s.Tag), ":") {
		return fmt.Errorf("tag %q must be of the form repository:tag", s.Tag)
	}
	if s.Name == "" {
		s.Name = path.Base(s.Binary)
	}
	if strings.Contains(s.Name, "/") {
		return fmt.Errorf("name %q must be a plain file name", s.Name)
	}
	if s.Arch == "" {
		s.Arch = "amd64"
	}
	return nil
}

// layerTar builds the single filesystem layer: /etc/passwd, /etc/group, /tmp and the binary.
func layerTar(s *Spec, bin []byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dir := func(name string, mode int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, ModTime: epoch, Format: tar.FormatPAX})
	}
	file := func(name string, mode int64, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", NonRootUID, NonRootUID)
	group := fmt.Sprintf("root:x:0:\nnonroot:x:%d:\n", NonRootUID)
	steps := []func() error{
		func() error { return file(s.Name, 0o755, bin) },
		func() error { return dir("etc", 0o755) },
		func() error { return file("etc/group", 0o644, []byte(group)) },
		func() error { return file("etc/passwd", 0o644, []byte(passwd)) },
		func() error { return dir("tmp", 0o1777) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func sha(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// Build writes a docker-archive ("docker save" format, importable with `ctr images import`,
// `docker load` and `kind load image-archive`) to w.
func Build(s Spec, w io.Writer) (Result, error) {
	if err := s.validate(); err != nil {
		return Result{}, err
	}
	bin, err := os.ReadFile(s.Binary)
	if err != nil {
		return Result{}, fmt.Errorf("read binary: %w", err)
	}
	layer, err := layerTar(&s, bin)
	if err != nil {
		return Result{}, fmt.Errorf("build layer: %w", err)
	}
	diffID := sha(layer)

	ts := epoch.Format(time.RFC3339)
	cfg := imageConfig{
		Architecture: s.Arch,
		OS:           "linux",
		Created:      ts,
		Config: containerConfig{
			User:       fmt.Sprintf("%d:%d", s.UID, s.UID),
			Env:        append([]string{"PATH=/", "HOME=/tmp"}, s.Env...),
			Entrypoint: []string{"/" + s.Name},
			Cmd:        s.Args,
			WorkingDir: "/",
			Labels:     s.Labels,
		},
		RootFS:  rootFS{Type: "layers", DiffIDs: []string{"sha256:" + diffID}},
		History: []history{{Created: ts, CreatedBy: "spawner imagebuilder: /" + s.Name}},
	}
	if len(s.ExposedTCP) > 0 {
		cfg.Config.ExposedPorts = map[string]struct{}{}
		for _, p := range s.ExposedTCP {
			cfg.Config.ExposedPorts[fmt.Sprintf("%d/tcp", p)] = struct{}{}
		}
	}
	cfgJSON, err := json.Marshal(cfg) // map keys are sorted, so this is deterministic
	if err != nil {
		return Result{}, err
	}
	cfgHex := sha(cfgJSON)
	manifest, err := json.Marshal([]manifestEntry{{
		Config:   cfgHex + ".json",
		RepoTags: []string{s.Tag},
		Layers:   []string{diffID + "/layer.tar"},
	}})
	if err != nil {
		return Result{}, err
	}

	tw := tar.NewWriter(w)
	entries := map[string][]byte{
		cfgHex + ".json":      cfgJSON,
		diffID + "/layer.tar": layer,
		diffID + "/VERSION":   []byte("1.0"),
		"manifest.json":       manifest,
	}
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: diffID + "/", Mode: 0o755, ModTime: epoch}); err != nil {
		return Result{}, err
	}
	for _, n := range names {
		data := entries[n]
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: 0o644, Size: int64(len(data)), ModTime: epoch}); err != nil {
			return Result{}, err
		}
		if _, err := tw.Write(data); err != nil {
			return Result{}, err
		}
	}
	if err := tw.Close(); err != nil {
		return Result{}, err
	}
	return Result{ConfigDigest: "sha256:" + cfgHex, LayerDiffID: "sha256:" + diffID}, nil
}

// Command trimcrd keeps a CRD manifest well under the size client-side
// `kubectl apply` can handle while keeping the descriptions users read with
// `kubectl explain`.
//
// A SessionLivedBackend embeds core types (Container, Volume, Affinity,
// Toleration...) under spec.template. Described in full they bring the
// last-applied-configuration annotation `kubectl apply` writes to within 10%
// of its 256 KiB limit, and their documentation is the Pod's, one
// `kubectl explain pod.spec` away. trimcrd removes every description below
// the fields of spec.template, and keeps the rest: spawner's own fields,
// template's direct fields, the status.
//
// Usage: trimcrd FILE (rewritten in place).
package main

import (
	"bytes"
	"fmt"
	"os"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/yaml"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: trimcrd FILE")
		os.Exit(2)
	}
	if err := trim(os.Args[1]); err != nil {
		fmt.Fprintf(os.Stderr, "trimcrd: %v\n", err)
		os.Exit(1)
	}
}

func trim(path string) error {
	in, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.UnmarshalStrict(bytes.TrimPrefix(in, []byte("---\n")), &crd); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	for i := range crd.Spec.Versions {
		v := &crd.Spec.Versions[i]
		if v.Schema == nil || v.Schema.OpenAPIV3Schema == nil {
			return fmt.Errorf("%s: version %s has no schema", path, v.Name)
		}
		spec, ok := v.Schema.OpenAPIV3Schema.Properties["spec"]
		if !ok {
			return fmt.Errorf("%s: version %s has no spec", path, v.Name)
		}
		template, ok := spec.Properties["template"]
		if !ok {
			return fmt.Errorf("%s: version %s has no spec.template", path, v.Name)
		}
		for name, field := range template.Properties {
			stripBelow(&field)
			template.Properties[name] = field
		}
		spec.Properties["template"] = template
		v.Schema.OpenAPIV3Schema.Properties["spec"] = spec
	}
	out, err := yaml.Marshal(&crd)
	if err != nil {
		return err
	}
	// The struct always marshals a status, last; controller-gen leaves it
	// out of manifests, and so does this.
	if i := bytes.LastIndex(out, []byte("\nstatus:\n")); i >= 0 {
		out = out[:i+1]
	}
	return os.WriteFile(path, append([]byte("---\n"), out...), 0o644)
}

// stripBelow removes the descriptions of everything inside s, not s's own.
func stripBelow(s *apiextensionsv1.JSONSchemaProps) {
	for name, p := range s.Properties {
		strip(&p)
		s.Properties[name] = p
	}
	if s.Items != nil {
		if s.Items.Schema != nil {
			strip(s.Items.Schema)
		}
		for i := range s.Items.JSONSchemas {
			strip(&s.Items.JSONSchemas[i])
		}
	}
	if s.AdditionalProperties != nil && s.AdditionalProperties.Schema != nil {
		strip(s.AdditionalProperties.Schema)
	}
	for _, list := range [][]apiextensionsv1.JSONSchemaProps{s.AllOf, s.AnyOf, s.OneOf} {
		for i := range list {
			strip(&list[i])
		}
	}
}

func strip(s *apiextensionsv1.JSONSchemaProps) {
	s.Description = ""
	stripBelow(s)
}

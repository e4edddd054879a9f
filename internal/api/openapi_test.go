package api_test

import (
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/webgw/webgw/internal/api"
	"github.com/webgw/webgw/internal/model"
)

// jsonFields returns the JSON names of t's fields, embedded structs flattened.
func jsonFields(t reflect.Type) []string {
	var out []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if f.Anonymous {
			out = append(out, jsonFields(f.Type)...)
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name != "" && name != "-" {
			out = append(out, name)
		}
	}
	return out
}

// TestOpenAPISchemas: the request and answer schemas of api/openapi.yaml
// name exactly the JSON fields of the Go types, and the port endpoints are
// documented.
func TestOpenAPISchemas(t *testing.T) {
	b, err := os.ReadFile("../../api/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Paths      map[string]map[string]any `yaml:"paths"`
		Components struct {
			Schemas map[string]struct {
				Properties map[string]any `yaml:"properties"`
			} `yaml:"schemas"`
		} `yaml:"components"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	for schema, v := range map[string]any{
		"ServiceRequest": api.ServiceRequest{},
		"PortRequest":    api.PortRequest{},
		"Port":           api.PortDetail{},
		"ServiceInfo":    api.ServiceInfo{},
		"Service":        api.ServiceDetail{},
		"DomainRequest":  api.DomainRequest{},
		"Domain":         api.DomainDetail{},
		"DNSRecord":      api.DNSRecord{},
		"ZoneRequest":    api.ZoneRequest{},
		"Zone":           api.ZoneDetail{},
		"RecordRequest":  api.RecordRequest{},
		"Record":         model.Record{},
		"DSAnswer":       api.DSAnswer{},
		"DeviceRequest":  api.DeviceRequest{},
		"DevicePatch":    api.DevicePatch{},
		"Device":         api.DeviceDetail{},
		"YggStatus":      api.YggStatus{},
		"YggPeer":        api.YggPeer{},
	} {
		var documented []string
		for k := range doc.Components.Schemas[schema].Properties {
			documented = append(documented, k)
		}
		slices.Sort(documented)
		fields := jsonFields(reflect.TypeOf(v))
		slices.Sort(fields)
		if !slices.Equal(documented, fields) {
			t.Errorf("schema %s documents %v\nthe Go type has %v", schema, documented, fields)
		}
	}
	for path, methods := range map[string][]string{
		"/v1/ports":                         {"get", "post"},
		"/v1/ports/{proto}/{number}":        {"delete"},
		"/v1/services":                      {"get", "post"},
		"/v1/services/{name}":               {"get", "put", "delete"},
		"/v1/domains":                       {"get", "post"},
		"/v1/domains/{name}":                {"get", "delete"},
		"/v1/domains/{name}/verify":         {"post"},
		"/v1/dns/ds":                        {"get"},
		"/v1/dns/zones":                     {"get", "post"},
		"/v1/dns/zones/{zone}":              {"get", "delete"},
		"/v1/dns/zones/{zone}/verify":       {"post"},
		"/v1/dns/zones/{zone}/records":      {"get", "post"},
		"/v1/dns/zones/{zone}/records/{id}": {"delete"},
		"/v1/4to6/devices":                  {"get", "post"},
		"/v1/4to6/devices/{name}":           {"get", "patch", "delete"},
	} {
		for _, m := range methods {
			if _, ok := doc.Paths[path][m]; !ok {
				t.Errorf("%s %s is not documented", strings.ToUpper(m), path)
			}
		}
	}
}

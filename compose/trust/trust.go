// Package trust decides what the content of a deploy request may change on
// the host. The compose file and its env file are the operator's; a request
// brings variables of its own (`--env-file -`) that reach the file's
// ${...}. What a request may change is an allow-list: a project names the
// variables a request may set (Undeclared), and those may change only the
// harmless fields of the loaded project (Harmless); any other difference
// they make is a Violation (CheckRequest). New compose keys are therefore
// refused until they are added to the allow-list, never the other way round.
package trust

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"maps"
	"reflect"
	"regexp"
	"slices"
	"strings"

	"github.com/berth-deploy/berth/compose"
	"github.com/compose-spec/compose-go/v2/template"
	"github.com/compose-spec/compose-go/v2/types"
	"gopkg.in/yaml.v3"
)

// Harmless describes the fields a request's variables may change, for the
// documentation and the refusals: a service's image, the values of its
// environment variables and the values of its labels (except labels under
// com.docker. and dev.berth., which Berth and docker compose read).
const Harmless = "a service's image, its environment values and its label values"

// Reasons of a Violation.
const (
	// ReasonSet: the field's value depends on the request's variables.
	ReasonSet = "set by the request"
	// ReasonUnchecked: a request's variable is used where the file does
	// not load with a stand-in for its value (a boolean, a number, a port,
	// a file to read), so what it changes cannot be told.
	ReasonUnchecked = "reads the request's variables where Berth cannot tell what they change (a boolean, a number, a port, a file to read or the like)"
)

// A Violation is one field of the project that a request's variables
// change beyond the harmless ones (CheckRequest), or that a shipped compose
// file may not hold (CheckShipped). CheckRequest never sets a value: values
// come from the request or from the host's env file, and either may be
// secret.
type Violation struct {
	// Service is the service the field belongs to, or "" for a field of the
	// project (a volume's or a network's name, an x- extension).
	Service string
	// Field is the field's path in the loaded compose model, below the
	// service if there is one: "uts", "volumes[1]", "volumes.data.name".
	// "" when it is the service as a whole, or not known.
	Field string
	// Variables are the request's variables found to reach the field,
	// sorted; CheckRequest always names at least one.
	Variables []string
	// Value is the field's value as the loaded file has it, for
	// CheckShipped, with the values of the interpolation variables written
	// ${NAME} (see redactor); "" for CheckRequest.
	Value string
	// Reason is ReasonSet or ReasonUnchecked for CheckRequest, why the
	// field is refused for CheckShipped.
	Reason string
}

// String describes v, for example
// "service web: uts: set by the request (UTS)", or with a Value
// `service web: privileged "true": gives the container ...`.
func (v Violation) String() string {
	var b strings.Builder
	if v.Service != "" {
		b.WriteString("service " + v.Service)
		if v.Field != "" {
			b.WriteString(": " + v.Field)
		}
	} else if v.Field != "" {
		b.WriteString(v.Field)
	} else {
		b.WriteString("the compose file")
	}
	if v.Value != "" {
		fmt.Fprintf(&b, " %q", v.Value)
	}
	b.WriteString(": " + v.Reason)
	if len(v.Variables) > 0 {
		fmt.Fprintf(&b, " (%s)", strings.Join(v.Variables, ", "))
	}
	return b.String()
}

// Undeclared returns, sorted, the names in env that declared does not list:
// the variables a request may not set.
func Undeclared(env map[string]string, declared []string) []string {
	var out []string
	for name := range env {
		if !slices.Contains(declared, name) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// newMarker returns what a probe load puts where a request's variable was:
// a path, so a bind mount's source stays a bind mount, followed by the
// variables' names. It is random, so no request can send a value equal to
// it (which would make the two loads agree), and the pattern that finds
// the names in it.
func newMarker() (string, *regexp.Regexp, error) {
	nonce := make([]byte, 12)
	if _, err := rand.Read(nonce); err != nil {
		return "", nil, err
	}
	m := "/berth-request-" + hex.EncodeToString(nonce) + "/"
	return m, regexp.MustCompile(regexp.QuoteMeta(m) + `([A-Za-z_][A-Za-z0-9_]*(?:,[A-Za-z_][A-Za-z0-9_]*)*)`), nil
}

// interpolating finds the field in compose-go's error for a value that
// does not cast ("error while interpolating services.web.privileged: ...").
var interpolating = regexp.MustCompile(`error while interpolating ([^\s:]+)`)

// CheckRequest lists what the request's variables (o.Env) change in
// loaded, the project loaded with o, beyond the harmless fields. The file
// is loaded again, twice (more, one variable at a time, when a probe does
// not load), and every field but the harmless ones is compared with
// loaded's:
//
//   - with every string that reads a request's variable (in any way: ${V},
//     ${V:-default}, ${V:+alternative}, nested) replaced by a marker, which
//     shows every setting that depends on the request, whatever its values;
//   - with each request variable set to a marker, which also follows a
//     value through the env files of an include.
//
// A probe that cannot load (a variable used as a boolean or a number) is a
// violation too. The error is for a failure to check, not a refusal.
func CheckRequest(ctx context.Context, o compose.LoadOptions, loaded *types.Project) ([]Violation, error) {
	if len(o.Env) == 0 {
		return nil, nil
	}
	names := slices.Sorted(maps.Keys(o.Env))
	marker, markerNames, err := newMarker()
	if err != nil {
		return nil, fmt.Errorf("check request: %w", err)
	}
	namesIn := func(v any) []string { return namesIn(v, markerNames, names) }
	want, err := canonical(loaded)
	if err != nil {
		return nil, fmt.Errorf("check request: %w", err)
	}
	found := map[string]*Violation{}
	add := func(v Violation) {
		key := v.Service + "\x00" + v.Field + "\x00" + v.Reason
		if f, ok := found[key]; ok {
			f.Variables = union(f.Variables, v.Variables)
			return
		}
		found[key] = &v
	}

	// probe loads the file with vars tainted (or, with placeholders, set
	// to the marker) and the request's other variables as sent, and
	// reports what differs from loaded. It reports whether it loaded.
	probe := func(vars []string, placeholders bool) (bool, error) {
		po := o
		if placeholders {
			po.Env = maps.Clone(o.Env)
			for _, name := range vars {
				po.Env[name] = marker + name
			}
		} else {
			po.Substitute = func(value string, lookup template.Mapping) (string, error) {
				var read []string
				out, err := template.Substitute(value, func(name string) (string, bool) {
					if slices.Contains(vars, name) && !slices.Contains(read, name) {
						read = append(read, name)
					}
					return lookup(name)
				})
				if err != nil || len(read) == 0 {
					return out, err
				}
				slices.Sort(read)
				return marker + strings.Join(read, ","), nil
			}
		}
		p, err := compose.Load(ctx, po)
		if err := ctx.Err(); err != nil {
			return false, err
		}
		if err != nil {
			if len(vars) == 1 {
				add(unchecked(err.Error(), vars))
			}
			return false, nil
		}
		got, err := canonical(p)
		if err != nil {
			return true, fmt.Errorf("check request: %w", err)
		}
		var paths [][]string
		diff(nil, want, got, &paths)
		for _, path := range paths {
			// An item of a list is named as a whole ("volumes[1]"): the
			// markers may change what a short form parses into.
			if i := slices.IndexFunc(path, func(k string) bool { return strings.HasPrefix(k, "[") }); i >= 0 {
				path = path[:i+1]
			}
			who := namesIn(at(got, path))
			if len(who) == 0 {
				who = vars
			}
			v := Violation{Field: format(path), Variables: who, Reason: ReasonSet}
			if len(path) >= 2 && path[0] == "services" {
				v.Service, v.Field = path[1], format(path[2:])
			}
			add(v)
		}
		return true, nil
	}
	for _, placeholders := range []bool{false, true} {
		ok, err := probe(names, placeholders)
		if err != nil {
			return nil, err
		}
		if ok || len(names) == 1 {
			continue
		}
		// Some variable keeps the file from loading: one at a time, to
		// name it and still see what the others change.
		alone := true
		for _, name := range names {
			ok, err := probe([]string{name}, placeholders)
			if err != nil {
				return nil, err
			}
			alone = alone && ok
		}
		if alone { // only together: name them all
			add(Violation{Variables: names, Reason: ReasonUnchecked})
		}
	}
	out := make([]Violation, 0, len(found))
	for _, v := range found {
		out = append(out, *v)
	}
	slices.SortFunc(out, func(a, b Violation) int {
		return strings.Compare(a.Service+"\x00"+a.Field+"\x00"+a.Reason, b.Service+"\x00"+b.Field+"\x00"+b.Reason)
	})
	return out, nil
}

// unchecked is the violation for a probe that did not load, with its field
// when compose-go's error names it. The error itself is not kept: it may
// quote values.
func unchecked(msg string, vars []string) Violation {
	v := Violation{Reason: ReasonUnchecked, Variables: vars}
	if m := interpolating.FindStringSubmatch(msg); m != nil {
		path := strings.Split(m[1], ".")
		if len(path) >= 2 && path[0] == "services" {
			v.Service, v.Field = path[1], strings.Join(path[2:], ".")
		} else {
			v.Field = m[1]
		}
	}
	return v
}

// canonical is the loaded project as a tree of maps, lists and scalars, as
// compose-go marshals it (every key, a service's extensions included), with
// the harmless fields blanked.
func canonical(p *types.Project) (map[string]any, error) {
	b, err := p.MarshalYAML()
	if err != nil {
		return nil, fmt.Errorf("marshal project: %w", err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("read the marshalled project: %w", err)
	}
	// Secret and config contents are left out of the marshalled form; they
	// are compared all the same.
	for _, kind := range []struct {
		key     string
		content map[string]string
	}{{"secrets", contents(p.Secrets)}, {"configs", contents(p.Configs)}} {
		if len(kind.content) == 0 {
			continue
		}
		objs, _ := m[kind.key].(map[string]any)
		for name, c := range kind.content {
			if obj, ok := objs[name].(map[string]any); ok {
				obj["content"] = c
			}
		}
	}
	// A top-level x- extension is read by nobody but YAML anchors, and what
	// an anchor lends a service is compared in the service. x-berth stays:
	// it is the name Berth's own extensions use.
	for k := range m {
		if strings.HasPrefix(k, "x-") && k != compose.ExtensionKey {
			delete(m, k)
		}
	}
	services, _ := m["services"].(map[string]any)
	for _, s := range services {
		svc, ok := s.(map[string]any)
		if !ok {
			continue
		}
		delete(svc, "image")
		if env, ok := svc["environment"].(map[string]any); ok {
			for k := range env {
				env[k] = nil
			}
		}
		if labels, ok := svc["labels"].(map[string]any); ok {
			for k := range labels {
				if !strings.HasPrefix(k, "com.docker.") && !strings.HasPrefix(k, "dev.berth.") {
					labels[k] = nil
				}
			}
		}
	}
	return m, nil
}

func contents[T types.SecretConfig | types.ConfigObjConfig](objs map[string]T) map[string]string {
	out := map[string]string{}
	for name, o := range objs {
		if c := types.FileObjectConfig(o).Content; c != "" {
			out[name] = c
		}
	}
	return out
}

// diff appends to out the path of every place where a and b differ: a key
// only one of them has, lists of different lengths, different scalars.
// Below the top two levels (services.web, volumes.data: keys written in the
// file) a key only one side has may come from a value ("${K}=v" in a list
// form of environment, extra_hosts and the like), so the path stops at its
// map and never names it.
func diff(path []string, a, b any, out *[][]string) {
	switch av := a.(type) {
	case map[string]any:
		bv, ok := b.(map[string]any)
		if !ok {
			break
		}
		for _, k := range slices.Sorted(maps.Keys(union2(av, bv))) {
			_, inA := av[k]
			_, inB := bv[k]
			if inA != inB && len(path) >= 2 {
				*out = append(*out, path)
				continue
			}
			diff(append(slices.Clip(path), k), av[k], bv[k], out)
		}
		return
	case []any:
		bv, ok := b.([]any)
		if !ok || len(av) != len(bv) {
			break
		}
		for i := range av {
			diff(append(slices.Clip(path), fmt.Sprintf("[%d]", i)), av[i], bv[i], out)
		}
		return
	}
	if !reflect.DeepEqual(a, b) {
		*out = append(*out, path)
	}
}

func union2(a, b map[string]any) map[string]bool {
	keys := map[string]bool{}
	for k := range a {
		keys[k] = true
	}
	for k := range b {
		keys[k] = true
	}
	return keys
}

// at is the subtree of m at path, or nil.
func at(m any, path []string) any {
	for _, k := range path {
		switch v := m.(type) {
		case map[string]any:
			m = v[k]
		case []any:
			var i int
			if _, err := fmt.Sscanf(k, "[%d]", &i); err != nil || i < 0 || i >= len(v) {
				return nil
			}
			m = v[i]
		default:
			return nil
		}
	}
	return m
}

// namesIn returns the request's variables named by the markers in v (any
// subtree, or an error message), sorted.
func namesIn(v any, markerNames *regexp.Regexp, names []string) []string {
	var out []string
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for _, e := range v {
				walk(e)
			}
		case []any:
			for _, e := range v {
				walk(e)
			}
		case string:
			for _, m := range markerNames.FindAllStringSubmatch(v, -1) {
				for _, n := range strings.Split(m[1], ",") {
					if slices.Contains(names, n) && !slices.Contains(out, n) {
						out = append(out, n)
					}
				}
			}
		}
	}
	walk(v)
	slices.Sort(out)
	return out
}

func union(a, b []string) []string {
	out := slices.Clone(a)
	for _, s := range b {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out
}

// format writes a path as "volumes[1].source".
func format(path []string) string {
	var b strings.Builder
	for _, k := range path {
		if !strings.HasPrefix(k, "[") && b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(k)
	}
	return b.String()
}

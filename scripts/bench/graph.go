package main

import (
	"fmt"
	"io"
	"os"
	"sort"
	"time"

	"gopkg.in/yaml.v3"
)

// composeDeps reads a compose file's dependency graph: each service and the
// services it depends_on (either form: a list, or a map with conditions).
func composeDeps(r io.Reader) (map[string][]string, error) {
	var doc struct {
		Services map[string]struct {
			DependsOn yaml.Node `yaml:"depends_on"`
		} `yaml:"services"`
	}
	if err := yaml.NewDecoder(r).Decode(&doc); err != nil {
		return nil, fmt.Errorf("compose deps: %w", err)
	}
	deps := map[string][]string{}
	for name, s := range doc.Services {
		deps[name] = nil
		n := s.DependsOn
		switch n.Kind {
		case 0:
		case yaml.SequenceNode:
			for _, c := range n.Content {
				deps[name] = append(deps[name], c.Value)
			}
		case yaml.MappingNode:
			for i := 0; i < len(n.Content); i += 2 {
				deps[name] = append(deps[name], n.Content[i].Value)
			}
		default:
			return nil, fmt.Errorf("compose deps: service %s: depends_on is neither a list nor a map", name)
		}
		sort.Strings(deps[name])
	}
	for name, ds := range deps {
		for _, d := range ds {
			if _, ok := deps[d]; !ok {
				return nil, fmt.Errorf("compose deps: service %s depends on %s, which is not a service", name, d)
			}
		}
	}
	return deps, nil
}

func readComposeDeps(path string) (map[string][]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("compose deps: %w", err)
	}
	defer f.Close()
	return composeDeps(f)
}

// longestChain is the heaviest path through the dependency graph, each
// service weighing dur[service] (0 when absent); the path lists it
// dependencies first.
func longestChain(deps map[string][]string, dur map[string]time.Duration) (time.Duration, []string, error) {
	type best struct {
		total time.Duration
		path  []string
	}
	memo := map[string]best{}
	visiting := map[string]bool{}
	var visit func(string) (best, error)
	visit = func(s string) (best, error) {
		if b, ok := memo[s]; ok {
			return b, nil
		}
		if visiting[s] {
			return best{}, fmt.Errorf("longest chain: a dependency cycle through %s", s)
		}
		visiting[s] = true
		var top best
		for _, d := range deps[s] {
			b, err := visit(d)
			if err != nil {
				return best{}, err
			}
			if b.total > top.total || top.path == nil {
				top = b
			}
		}
		visiting[s] = false
		b := best{total: top.total + dur[s], path: append(append([]string(nil), top.path...), s)}
		memo[s] = b
		return b, nil
	}
	names := make([]string, 0, len(deps))
	for s := range deps {
		names = append(names, s)
	}
	sort.Strings(names)
	var top best
	for _, s := range names {
		b, err := visit(s)
		if err != nil {
			return 0, nil, err
		}
		if b.total > top.total || top.path == nil {
			top = b
		}
	}
	return top.total, top.path, nil
}

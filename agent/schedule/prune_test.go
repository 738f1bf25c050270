package schedule

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"

	"github.com/berth-deploy/berth/agent/api"
	"github.com/berth-deploy/berth/agent/config"
	"github.com/berth-deploy/berth/internal/fakeengine"
)

// digest returns a fake sha256 digest made of c.
func digest(c string) string { return "sha256:" + strings.Repeat(c, 64) }

func TestPruneImages(t *testing.T) {
	eng, hist := fakeengine.New(), newFakeHistory()
	const reg = "registry.example.com:5000"
	web := func(d string) string { return reg + "/app/web@" + digest(d) }
	img := func(id string, size int64, repoDigests ...string) image.Summary {
		return image.Summary{ID: digest(id), Size: size, RepoDigests: repoDigests}
	}

	// app: newest first #5 succeeded (live), #4 rolled back, #3..#1 succeeded.
	hist.record("app", 1, api.OutcomeSucceeded, false, map[string]string{"web": web("1"), "cache": "docker.io/library/redis@" + digest("a")})
	hist.record("app", 2, api.OutcomeSucceeded, false, map[string]string{"web": digest("2")}) // built on the host: an image ID
	hist.record("app", 3, api.OutcomeSucceeded, false, map[string]string{"web": web("3"), "cache": "docker.io/library/redis@" + digest("b")})
	hist.record("app", 4, api.OutcomeRolledBack, false, map[string]string{"web": web("4")})
	hist.record("app", 5, api.OutcomeSucceeded, true, map[string]string{"web": web("5"), "cache": "docker.io/library/redis@" + digest("b")})
	// other: live release #1 is older than the last two succeeded; #4 is
	// under way.
	hist.record("other", 1, api.OutcomeSucceeded, true, map[string]string{"web": reg + "/other/web@" + digest("c")})
	hist.record("other", 2, api.OutcomeSucceeded, false, map[string]string{"web": reg + "/other/web@" + digest("d")})
	hist.record("other", 3, api.OutcomeSucceeded, false, map[string]string{"web": reg + "/other/web@" + digest("e")})
	hist.record("other", 4, api.OutcomeInProgress, false, map[string]string{"web": reg + "/other/web@" + digest("f")})
	// A project that is not configured any more: its images are foreign.
	hist.record("gone", 1, api.OutcomeSucceeded, false, map[string]string{"web": reg + "/gone/web@" + digest("9")})

	imgs := []image.Summary{
		img("1", 100, web("1")),                     // in use by a stopped container: stays
		img("2", 200),                               // app #2 by ID: goes
		img("3", 300, web("3")),                     // kept release: stays
		img("4", 400, web("4")),                     // rolled back, older than #5: goes
		img("5", 500, web("5")),                     // live: stays
		img("a", 10, "redis@"+digest("a")),          // app #1's cache, in familiar form: goes
		img("b", 20, "redis@"+digest("b")),          // kept: stays
		img("c", 30, reg+"/other/web@"+digest("c")), // other's live release: stays
		img("d", 40, reg+"/other/web@"+digest("d")), // stays
		img("e", 50, reg+"/other/web@"+digest("e")), // stays
		img("f", 60, reg+"/other/web@"+digest("f")), // in progress: stays
		img("9", 90, reg+"/gone/web@"+digest("9")),  // not Berth's (any more): stays
		img("7", 70, "nginx@"+digest("8")),          // foreign: stays
		img("6", 60),                                // foreign, tagged below: stays
	}
	imgs[1].RepoTags = []string{"app-web:local"}
	imgs[13].RepoTags = []string{"someone/else:latest"}
	eng.SetImages(imgs...)
	// A stopped container of no project uses image 1.
	c := service(eng, "", "", 0, 0, "exited")
	eng.Update(c, func(in *container.InspectResponse) { in.Config.Labels = nil; in.Image = digest("1") })

	log, _ := testLogger(t)
	s, err := New(config.Jobs{PruneImages: &config.PruneJob{Schedule: "@daily", KeepReleases: 2}},
		[]string{"app", "other"}, eng, hist, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	removed, freed, err := s.prune(t.Context())
	if err != nil {
		t.Fatalf("prune: %v", err)
	}
	want := []string{digest("2"), digest("4"), digest("a")}
	slices.Sort(removed)
	if !slices.Equal(removed, want) {
		t.Errorf("removed %v\nwant %v", short(removed), short(want))
	}
	if freed != 200+400+10 {
		t.Errorf("freed %d bytes, want %d", freed, 610)
	}
	_, opts := eng.RemovedImages()
	for _, o := range opts {
		if o.Force || !o.PruneChildren {
			t.Errorf("remove options %+v: want PruneChildren and no Force", o)
		}
	}

	// Nothing more to do on a second run.
	if removed, err := s.PruneImages(t.Context()); err != nil || len(removed) != 0 {
		t.Errorf("second prune: removed %v, err %v; want nothing", short(removed), err)
	}
}

func TestPruneImagesRefusedAndFailed(t *testing.T) {
	eng, hist := fakeengine.New(), newFakeHistory()
	var imgs []image.Summary
	for i, d := range []string{"1", "2", "3", "4"} {
		hist.record("app", i+1, api.OutcomeSucceeded, i == 3, map[string]string{"web": "r.example/web@" + digest(d)})
		imgs = append(imgs, image.Summary{ID: digest(d), RepoDigests: []string{"r.example/web@" + digest(d)}})
	}
	eng.SetImages(imgs...)
	// Image 1 is tagged in another repository too; image 2's removal fails.
	eng.FailImageRemove(digest("1"), fmt.Errorf("conflict: unable to delete (must be forced) - image is referenced in multiple repositories: %w", cerrdefs.ErrConflict))
	eng.FailImageRemove(digest("2"), errors.New("disk on fire"))

	log, logs := testLogger(t)
	s, err := New(config.Jobs{PruneImages: &config.PruneJob{Schedule: "@daily", KeepReleases: 1}}, []string{"app"}, eng, hist, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	removed, err := s.PruneImages(t.Context())
	if err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Errorf("err = %v, want the failed removal", err)
	}
	if strings.Contains(fmt.Sprint(err), "multiple repositories") {
		t.Errorf("err = %v: a refused removal is not an error", err)
	}
	if !slices.Equal(removed, []string{digest("3")}) {
		t.Errorf("removed %v, want image 3 (the others refused or failed, 4 is live)", short(removed))
	}
	if !strings.Contains(logs.String(), "image kept: the engine refuses to remove it") {
		t.Errorf("the refusal is not logged")
	}
}

func TestPruneImagesNotConfigured(t *testing.T) {
	log, _ := testLogger(t)
	s, err := New(config.Jobs{}, nil, fakeengine.New(), newFakeHistory(), nil, log)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.PruneImages(t.Context()); err == nil {
		t.Error("prune without a prune_images job: want an error")
	}
}

func TestCanonicalDigestRef(t *testing.T) {
	d := digest("a")
	for _, tc := range []struct{ in, want string }{
		{"redis@" + d, "docker.io/library/redis@" + d},
		{"docker.io/library/redis@" + d, "docker.io/library/redis@" + d},
		{"127.0.0.1:5000/app/web:v1@" + d, "127.0.0.1:5000/app/web@" + d},
		{"web:v1", "web:v1"},
		{"NOT a ref", "NOT a ref"},
	} {
		if got, _ := canonicalDigestRef(tc.in); got != tc.want {
			t.Errorf("canonicalDigestRef(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func short(ids []string) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = shortID(id)
	}
	return out
}

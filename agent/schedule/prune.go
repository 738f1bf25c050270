package schedule

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"

	"github.com/berth-deploy/berth/agent/api"
)

// PruneImages removes the images of Berth releases that neither a
// container nor a kept release needs, and returns their IDs.
//
// What stays: every image a container uses (running or not, of any
// project or none), and every image of the newest keep_releases succeeded
// releases of each configured project, of its live release, and of a
// release still in progress (a deploy under way has pulled images no
// container uses yet). What may go: any other image that a recorded
// release of a configured project ran, by repository@digest or image ID.
// Images Berth never deployed are not Berth's and are never touched.
//
// Images are removed by ID, without force and with their untagged parents;
// the engine refuses an image a container has started to use meanwhile, or
// one that is also tagged in another repository: those are logged and
// kept.
func (s *Scheduler) PruneImages(ctx context.Context) (removed []string, err error) {
	removed, _, err = s.prune(ctx)
	return removed, err
}

// prune is PruneImages, also returning the bytes freed: the removed
// images' sizes as the engine reports them, which count layers shared with
// kept images too, so this is at most what the disk got back.
func (s *Scheduler) prune(ctx context.Context) (removed []string, freed int64, err error) {
	job := s.jobs.PruneImages
	if job == nil {
		return nil, 0, errors.New("prune images: the prune_images job is not configured")
	}
	if err := acquire(ctx, s.pruning); err != nil {
		return nil, 0, fmt.Errorf("prune images: %w", err)
	}
	defer func() { s.pruning <- struct{}{} }()

	keep, berth, err := s.releaseImages(job.KeepReleases)
	if err != nil {
		return nil, 0, fmt.Errorf("prune images: %w", err)
	}
	// Images first, containers second: a container created in between
	// still counts, and one created after is protected by the engine,
	// which refuses to remove an image in use without force.
	images, err := s.eng.ImageList(ctx, image.ListOptions{})
	if err != nil {
		return nil, 0, fmt.Errorf("prune images: list images: %w", err)
	}
	containers, err := s.eng.ContainerList(ctx, container.ListOptions{All: true})
	if err != nil {
		return nil, 0, fmt.Errorf("prune images: list containers: %w", err)
	}
	inUse := map[string]bool{}
	for _, c := range containers {
		inUse[c.ImageID] = true
	}

	var errs []error
	kept := 0
	for _, img := range images {
		switch {
		case !berth.matches(img):
			continue // not Berth's
		case inUse[img.ID] || keep.matches(img):
			kept++
			continue
		}
		names := append(slices.Clone(img.RepoTags), img.RepoDigests...)
		_, err := s.eng.ImageRemove(ctx, img.ID, image.RemoveOptions{PruneChildren: true})
		switch {
		case err == nil:
			removed = append(removed, img.ID)
			freed += img.Size
			s.log.Info("image removed", "image", shortID(img.ID), "names", names, "size", img.Size)
		case cerrdefs.IsNotFound(err):
			// Gone already.
		case cerrdefs.IsConflict(err):
			kept++
			s.log.Warn("image kept: the engine refuses to remove it", "image", shortID(img.ID), "names", names, "err", err)
		default:
			errs = append(errs, fmt.Errorf("remove image %s %v: %w", shortID(img.ID), names, err))
		}
		if ctx.Err() != nil {
			break
		}
	}
	if ctx.Err() != nil {
		errs = append(errs, ctx.Err())
	}
	s.log.Info("images pruned", "removed", len(removed), "bytes", freed, "kept", kept)
	if err := errors.Join(errs...); err != nil {
		return removed, freed, fmt.Errorf("prune images: %w", err)
	}
	return removed, freed, nil
}

// releaseImages reads the history of every configured project and returns
// the images that must stay and those Berth deployed at all.
func (s *Scheduler) releaseImages(keepReleases int) (keep, berth *imageSet, err error) {
	keep, berth = newImageSet(), newImageSet()
	for _, p := range s.projects {
		history, err := s.hist.History(p)
		if err != nil {
			return nil, nil, fmt.Errorf("history of %s: %w", p, err)
		}
		current, live, err := s.hist.Current(p)
		if err != nil {
			return nil, nil, fmt.Errorf("live release of %s: %w", p, err)
		}
		if live {
			keep.addRelease(current)
			berth.addRelease(current)
		}
		succeeded := 0
		for _, r := range history {
			berth.addRelease(r)
			switch {
			case r.Outcome == api.OutcomeSucceeded && succeeded < keepReleases:
				succeeded++
				keep.addRelease(r)
			case r.Outcome == api.OutcomeInProgress:
				keep.addRelease(r)
			}
		}
	}
	return keep, berth, nil
}

// imageSet is a set of images as releases name them: repository@digest
// references (canonical form), and bare "sha256:..." values, which are
// image IDs (an image built on the host) or manifest digests.
type imageSet struct {
	refs map[string]bool
	bare map[string]bool
}

func newImageSet() *imageSet {
	return &imageSet{refs: map[string]bool{}, bare: map[string]bool{}}
}

func (s *imageSet) addRelease(r api.Release) {
	for _, si := range r.Services {
		s.add(si.Pinned)
		s.add(si.Digest)
	}
}

func (s *imageSet) add(ref string) {
	switch {
	case ref == "":
	case strings.HasPrefix(ref, "sha256:"):
		s.bare[ref] = true
	default:
		canonical, digest := canonicalDigestRef(ref)
		s.refs[canonical] = true
		if digest != "" {
			s.bare[digest] = true
		}
	}
}

// matches reports whether img is in the set: one of its RepoDigests is a
// reference of the set, or its ID or the digest of one of its RepoDigests
// is a bare value of the set.
func (s *imageSet) matches(img image.Summary) bool {
	if s.bare[img.ID] {
		return true
	}
	for _, rd := range img.RepoDigests {
		canonical, digest := canonicalDigestRef(rd)
		if s.refs[canonical] || (digest != "" && s.bare[digest]) {
			return true
		}
	}
	return false
}

// canonicalDigestRef returns ref as "repository@digest" in normalized
// form (so "nginx@sha256:..." and "docker.io/library/nginx@sha256:..."
// compare equal; a tag is dropped) and its digest. A reference that does
// not parse, or has no digest, comes back as it is, with no digest.
func canonicalDigestRef(ref string) (canonical, digest string) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return ref, ""
	}
	d, ok := named.(reference.Digested)
	if !ok {
		return ref, ""
	}
	return reference.TrimNamed(named).String() + "@" + d.Digest().String(), d.Digest().String()
}

// shortID is an image or container ID as `docker ps` shows it.
func shortID(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

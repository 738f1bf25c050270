// Package store keeps release history in an embedded, crash-safe bbolt
// database: per project, every release record by number, the number of the
// live release, and a counter so release numbers are never reused.
package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/berth-deploy/berth/agent/api"
	bolt "go.etcd.io/bbolt"
)

// ErrNotFound is returned for a release that is not recorded.
var ErrNotFound = errors.New("release not found")

var (
	bucketProjects = []byte("projects")
	bucketReleases = []byte("releases")
	keyCurrent     = []byte("current")
	keyLast        = []byte("last")
	keyHold        = []byte("hold")
)

// Store is the release database. It is safe for concurrent use.
type Store struct {
	db *bolt.DB
}

// Open opens (creating if needed) the database at path. bbolt takes an
// exclusive file lock, so two agents cannot share one state directory.
func Open(path string) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketProjects)
		return err
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// Ping checks that the database answers a read.
func (s *Store) Ping() error {
	return s.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketProjects) == nil {
			return errors.New("store: projects bucket missing")
		}
		return nil
	})
}

func project(tx *bolt.Tx, name string, create bool) (*bolt.Bucket, error) {
	root := tx.Bucket(bucketProjects)
	if !create {
		return root.Bucket([]byte(name)), nil
	}
	b, err := root.CreateBucketIfNotExists([]byte(name))
	if err != nil {
		return nil, err
	}
	if _, err := b.CreateBucketIfNotExists(bucketReleases); err != nil {
		return nil, err
	}
	return b, nil
}

func itob(n int) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, uint64(n))
	return b
}

func readInt(b *bolt.Bucket, key []byte) int {
	v := b.Get(key)
	if v == nil {
		return 0
	}
	n, _ := strconv.Atoi(string(v))
	return n
}

// Begin records a new release with the next number and returns it.
func (s *Store) Begin(r api.Release) (api.Release, error) {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, err := project(tx, r.Project, true)
		if err != nil {
			return err
		}
		r.Number = readInt(b, keyLast) + 1
		if err := b.Put(keyLast, []byte(strconv.Itoa(r.Number))); err != nil {
			return err
		}
		return put(b, r)
	})
	if err != nil {
		return r, fmt.Errorf("begin release of %s: %w", r.Project, err)
	}
	return r, nil
}

func put(b *bolt.Bucket, r api.Release) error {
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return b.Bucket(bucketReleases).Put(itob(r.Number), data)
}

// Save updates a recorded release. With live set, it also becomes the
// project's current release, in the same transaction.
func (s *Store) Save(r api.Release, live bool) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, err := project(tx, r.Project, true)
		if err != nil {
			return err
		}
		if err := put(b, r); err != nil {
			return err
		}
		if live {
			return b.Put(keyCurrent, []byte(strconv.Itoa(r.Number)))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("save release %s #%d: %w", r.Project, r.Number, err)
	}
	return nil
}

// Current returns the live release of a project; ok is false before the
// first successful deploy.
func (s *Store) Current(projectName string) (r api.Release, ok bool, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		b, _ := project(tx, projectName, false)
		if b == nil {
			return nil
		}
		n := readInt(b, keyCurrent)
		if n == 0 {
			return nil
		}
		data := b.Bucket(bucketReleases).Get(itob(n))
		if data == nil {
			return fmt.Errorf("current release #%d: %w", n, ErrNotFound)
		}
		ok = true
		return json.Unmarshal(data, &r)
	})
	if err != nil {
		return r, false, fmt.Errorf("current release of %s: %w", projectName, err)
	}
	return r, ok, nil
}

// Get returns one release.
func (s *Store) Get(projectName string, number int) (api.Release, error) {
	var r api.Release
	err := s.db.View(func(tx *bolt.Tx) error {
		b, _ := project(tx, projectName, false)
		if b == nil {
			return ErrNotFound
		}
		data := b.Bucket(bucketReleases).Get(itob(number))
		if data == nil {
			return ErrNotFound
		}
		return json.Unmarshal(data, &r)
	})
	if err != nil {
		return r, fmt.Errorf("release %s #%d: %w", projectName, number, err)
	}
	return r, nil
}

// History returns the recorded releases of a project, newest first.
func (s *Store) History(projectName string) ([]api.Release, error) {
	var out []api.Release
	err := s.db.View(func(tx *bolt.Tx) error {
		b, _ := project(tx, projectName, false)
		if b == nil {
			return nil
		}
		c := b.Bucket(bucketReleases).Cursor()
		for k, v := c.Last(); k != nil; k, v = c.Prev() {
			var r api.Release
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("decode release %d: %w", binary.BigEndian.Uint64(k), err)
			}
			out = append(out, r)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("history of %s: %w", projectName, err)
	}
	return out, nil
}

// Prune deletes the oldest records beyond the newest keep, never the
// current release, and returns how many it deleted.
func (s *Store) Prune(projectName string, keep int) (int, error) {
	deleted := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, _ := project(tx, projectName, false)
		if b == nil || keep <= 0 {
			return nil
		}
		current := itob(readInt(b, keyCurrent))
		rb := b.Bucket(bucketReleases)
		c := rb.Cursor()
		var doomed [][]byte
		seen := 0
		for k, _ := c.Last(); k != nil; k, _ = c.Prev() {
			seen++
			if seen > keep && string(k) != string(current) {
				doomed = append(doomed, append([]byte(nil), k...))
			}
		}
		for _, k := range doomed {
			if err := rb.Delete(k); err != nil {
				return err
			}
		}
		deleted = len(doomed)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("prune history of %s: %w", projectName, err)
	}
	return deleted, nil
}

// SetHold records an operator's hold on a project's deploys, or clears it
// when h is nil. Holds survive restarts.
func (s *Store) SetHold(projectName string, h *api.Holder) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, err := project(tx, projectName, true)
		if err != nil {
			return err
		}
		if h == nil {
			return b.Delete(keyHold)
		}
		data, err := json.Marshal(h)
		if err != nil {
			return err
		}
		return b.Put(keyHold, data)
	})
	if err != nil {
		return fmt.Errorf("set hold on %s: %w", projectName, err)
	}
	return nil
}

// Hold returns the operator's hold on a project, or nil.
func (s *Store) Hold(projectName string) (*api.Holder, error) {
	var h *api.Holder
	err := s.db.View(func(tx *bolt.Tx) error {
		b, _ := project(tx, projectName, false)
		if b == nil {
			return nil
		}
		data := b.Get(keyHold)
		if data == nil {
			return nil
		}
		h = &api.Holder{}
		return json.Unmarshal(data, h)
	})
	if err != nil {
		return nil, fmt.Errorf("hold on %s: %w", projectName, err)
	}
	return h, nil
}

// Unfinished returns the newest release of a project if it is still in
// progress: the journal entry of a release agentd did not finish.
func (s *Store) Unfinished(projectName string) (r api.Release, ok bool, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		b, _ := project(tx, projectName, false)
		if b == nil {
			return nil
		}
		_, v := b.Bucket(bucketReleases).Cursor().Last()
		if v == nil {
			return nil
		}
		if err := json.Unmarshal(v, &r); err != nil {
			return err
		}
		ok = r.Outcome == api.OutcomeInProgress
		return nil
	})
	if err != nil {
		return r, false, fmt.Errorf("unfinished release of %s: %w", projectName, err)
	}
	return r, ok, nil
}

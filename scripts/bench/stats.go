package main

import (
	"math"
	"sort"
	"time"
)

// Window is what the requests started in [From, To) saw.
type Window struct {
	Sent, Failed       int
	P50, P90, P99, Max time.Duration
	Over1s             int // requests that took over a second
}

// window summarizes the requests that started in [from, to). Failed
// requests count in Failed and in the latencies (a 502 took what it took).
func window(reqs []Request, from, to time.Time) Window {
	var w Window
	var lat []time.Duration
	for _, q := range reqs {
		if q.Start.Before(from) || !q.Start.Before(to) {
			continue
		}
		w.Sent++
		if !q.OK {
			w.Failed++
		}
		if q.Latency > time.Second {
			w.Over1s++
		}
		lat = append(lat, q.Latency)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	w.P50, w.P90, w.P99 = percentile(lat, 50), percentile(lat, 90), percentile(lat, 99)
	if len(lat) > 0 {
		w.Max = lat[len(lat)-1]
	}
	return w
}

// percentile of sorted values, nearest rank; 0 when there are none.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = max(rank, 1)
	return sorted[min(rank, len(sorted))-1]
}

// Spread is the median of several runs' figures with their min and max.
type Spread struct {
	Median, Min, Max float64
	N                int
}

// spread of the values (the median of an even count is the mean of the
// middle two). NaN values (a figure a run could not measure) are left out.
func spread(vals []float64) Spread {
	var v []float64
	for _, x := range vals {
		if !math.IsNaN(x) {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return Spread{Median: math.NaN(), Min: math.NaN(), Max: math.NaN()}
	}
	sort.Float64s(v)
	m := v[len(v)/2]
	if len(v)%2 == 0 {
		m = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return Spread{Median: m, Min: v[0], Max: v[len(v)-1], N: len(v)}
}

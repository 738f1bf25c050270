package main

import (
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

// Mark is a step of a deploy drawn as a vertical line: At seconds from the
// deploy's start.
type Mark struct {
	At    float64
	Label string
}

// composeMarks: bench.sh's marks of the docker-compose deploy.
func composeMarks(p Phases) []Mark {
	ds := p["deploy_start"]
	var out []Mark
	for _, m := range []struct{ phase, label string }{
		{"deploy_start", "pull"}, {"hooks_start", "migrate, collectstatic"}, {"up_start", "up -d"}, {"deploy_end", "done"},
	} {
		if t, ok := p[m.phase]; ok {
			out = append(out, Mark{t.Sub(ds).Seconds(), m.label})
		}
	}
	return out
}

// berthMarks: the steps of Berth's deploy, from its event stream: the
// apply, where each service's rollout starts, each proxy reload, the monitor
// window, the result.
func berthMarks(ro Rollout, start time.Time) []Mark {
	out := []Mark{{0, "start"}}
	if !ro.ApplyStart.IsZero() {
		out = append(out, Mark{ro.ApplyStart.Sub(start).Seconds(), "apply"})
	}
	for _, s := range ro.sortedSpans() {
		out = append(out, Mark{s.Start.Sub(start).Seconds(), s.Service})
	}
	for _, t := range ro.Reloads {
		out = append(out, Mark{t.Sub(start).Seconds(), "reload"})
	}
	if !ro.MonitorStart.IsZero() {
		out = append(out, Mark{ro.MonitorStart.Sub(start).Seconds(), "monitor"})
	}
	out = append(out, Mark{ro.Result.Sub(start).Seconds(), "done"})
	sort.SliceStable(out, func(i, j int) bool { return out[i].At < out[j].At })
	return out
}

// latencyPoints: each request as (seconds from start, milliseconds), the
// successful and the failed apart; a latency under floor ms is drawn at floor.
func latencyPoints(reqs []Request, start time.Time, floor float64) (ok, failed plotter.XYs) {
	for _, q := range reqs {
		xy := plotter.XY{X: q.Start.Sub(start).Seconds(), Y: math.Max(float64(q.Latency.Microseconds())/1000, floor)}
		if q.OK {
			ok = append(ok, xy)
		} else {
			failed = append(failed, xy)
		}
	}
	return ok, failed
}

// latencyPlot: one system's requests over time, the steps marked.
func latencyPlot(title string, reqs []Request, start time.Time, marks []Mark, ymax float64) (*plot.Plot, error) {
	const floor = 0.5
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "seconds from the start of the deploy"
	p.Y.Label.Text = "latency (ms, log)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Min, p.Y.Max = floor, ymax
	ok, failed := latencyPoints(reqs, start, floor)
	if len(ok) > 0 {
		s, err := plotter.NewScatter(ok)
		if err != nil {
			return nil, fmt.Errorf("plot: %w", err)
		}
		s.GlyphStyle.Radius = vg.Points(0.8)
		s.GlyphStyle.Color = color.RGBA{R: 31, G: 119, B: 180, A: 255}
		p.Add(s)
		p.Legend.Add("request (kept-alive clients)", s)
	}
	if len(failed) > 0 {
		s, err := plotter.NewScatter(failed)
		if err != nil {
			return nil, fmt.Errorf("plot: %w", err)
		}
		s.GlyphStyle.Radius = vg.Points(2)
		s.GlyphStyle.Shape = draw.CrossGlyph{}
		s.GlyphStyle.Color = color.RGBA{R: 214, G: 39, B: 40, A: 255}
		p.Add(s)
		p.Legend.Add(fmt.Sprintf("failed (%d)", len(failed)), s)
	}
	// Labels on three levels, so that steps close together stay readable.
	levels := []float64{ymax / 1.4, ymax / 2.6, ymax / 5}
	for i, m := range marks {
		l, err := plotter.NewLine(plotter.XYs{{X: m.At, Y: floor}, {X: m.At, Y: ymax}})
		if err != nil {
			return nil, fmt.Errorf("plot: %w", err)
		}
		l.Dashes = []vg.Length{vg.Points(3), vg.Points(2)}
		l.Color = color.Gray{Y: 80}
		p.Add(l)
		lb, err := plotter.NewLabels(plotter.XYLabels{XYs: plotter.XYs{{X: m.At, Y: levels[i%len(levels)]}}, Labels: []string{" " + m.Label}})
		if err != nil {
			return nil, fmt.Errorf("plot: %w", err)
		}
		for j := range lb.TextStyle {
			lb.TextStyle[j].Font.Size = vg.Points(8)
		}
		p.Add(lb)
	}
	p.X.Tick.Marker = everyFiveSeconds{}
	p.Legend.Top = true
	p.Legend.Left = false
	return p, nil
}

// everyFiveSeconds: a labelled tick every 5 s, a small one every second.
type everyFiveSeconds struct{}

func (everyFiveSeconds) Ticks(min, max float64) []plot.Tick {
	var ts []plot.Tick
	for x := math.Ceil(min); x <= max; x++ {
		t := plot.Tick{Value: x}
		if int(x)%5 == 0 {
			t.Label = fmt.Sprintf("%.0f", x)
		}
		ts = append(ts, t)
	}
	return ts
}

// drawLatency writes the picture (SVG or PNG, by path's extension):
// docker-compose above, Berth below, the same scales.
func drawLatency(path string, r *Run) error {
	cStart, bStart := r.ComposePhases["deploy_start"], r.BerthPhases["deploy_start"]
	ymax := 10.0
	for _, q := range append(append([]Request(nil), r.ComposeReqs...), r.BerthReqs...) {
		ymax = math.Max(ymax, float64(q.Latency.Microseconds())/1000*2)
	}
	cp, err := latencyPlot("docker-compose pull && up -d", r.ComposeReqs, cStart, composeMarks(r.ComposePhases), ymax)
	if err != nil {
		return err
	}
	bp, err := latencyPlot("Berth: agentctl deploy (steps from its --json events)", r.BerthReqs, bStart, berthMarks(r.Deploy, bStart), ymax)
	if err != nil {
		return err
	}
	xmin, xmax := math.Min(cp.X.Min, bp.X.Min), math.Max(cp.X.Max, bp.X.Max)
	cp.X.Min, bp.X.Min, cp.X.Max, bp.X.Max = xmin, xmin, xmax, xmax
	for _, p := range []*plot.Plot{cp, bp} {
		one, err := plotter.NewLine(plotter.XYs{{X: xmin, Y: 1000}, {X: xmax, Y: 1000}})
		if err != nil {
			return fmt.Errorf("draw latency: %w", err)
		}
		one.Color = color.NRGBA{R: 214, G: 39, B: 40, A: 110}
		p.Add(one)
		p.Legend.Add("1 s", one)
	}
	w, h := vg.Points(900), vg.Points(640)
	var img interface {
		vg.CanvasSizer
		io.WriterTo
	}
	switch strings.ToLower(filepath.Ext(path)) {
	case ".svg":
		img = vgsvg.New(w, h)
	case ".png":
		img = vgimg.PngCanvas{Canvas: vgimg.NewWith(vgimg.UseWH(w, h), vgimg.UseDPI(110))}
	default:
		return fmt.Errorf("draw latency: %s: want a .svg or .png file", path)
	}
	dc := draw.New(img)
	plots := [][]*plot.Plot{{cp}, {bp}}
	canvases := plot.Align(plots, draw.Tiles{Rows: 2, Cols: 1, PadY: vg.Points(18), PadTop: vg.Points(6),
		PadBottom: vg.Points(6), PadLeft: vg.Points(6), PadRight: vg.Points(10)}, dc)
	cp.Draw(canvases[0][0])
	bp.Draw(canvases[1][0])
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("draw latency: %w", err)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("draw latency: %w", err)
	}
	if _, err := img.WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("draw latency: %w", err)
	}
	return f.Close()
}

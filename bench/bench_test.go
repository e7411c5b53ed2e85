package bench

import (
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestSummarize(t *testing.T) {
	tests := []struct {
		name string
		in   []float64
		want Stats
	}{
		{"empty", nil, Stats{}},
		{"one", []float64{7}, Stats{N: 1, Min: 7, P50: 7, P95: 7, Max: 7, Mean: 7}},
		{"two", []float64{2, 1}, Stats{N: 2, Min: 1, P50: 1, P95: 2, Max: 2, Mean: 1.5}},
		{"unsorted ten", []float64{10, 9, 8, 7, 6, 5, 4, 3, 2, 1}, Stats{N: 10, Min: 1, P50: 5, P95: 10, Max: 10, Mean: 5.5}},
		{"twenty", seq(20), Stats{N: 20, Min: 1, P50: 10, P95: 19, Max: 20, Mean: 10.5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := append([]float64(nil), tt.in...)
			if got := Summarize(tt.in); got != tt.want {
				t.Errorf("Summarize(%v) = %+v, want %+v", tt.in, got, tt.want)
			}
			for i := range in {
				if in[i] != tt.in[i] {
					t.Fatalf("Summarize reordered its input")
				}
			}
		})
	}
}

func seq(n int) []float64 {
	s := make([]float64, n)
	for i := range s {
		s[i] = float64(i + 1)
	}
	return s
}

func TestParentPID(t *testing.T) {
	tests := []struct {
		stat string
		want int
		ok   bool
	}{
		{"123 (postgres) S 100 123 123 0 -1", 100, true},
		{"124 (postgres: bench: checkpointer ) S 123 124 124 0", 123, true},
		{"125 (a) b) c) R 7 125", 7, true},
		{"126 (trunc", 0, false},
		{"127 (x) S", 0, false},
	}
	for _, tt := range tests {
		got, ok := parentPID([]byte(tt.stat))
		if got != tt.want || ok != tt.ok {
			t.Errorf("parentPID(%q) = %d, %v; want %d, %v", tt.stat, got, ok, tt.want, tt.ok)
		}
	}
}

func TestParsePSS(t *testing.T) {
	rollup := "00400000-7ffd [rollup]\nRss:               12000 kB\nPss:                4242 kB\nPss_Anon:           1000 kB\n"
	if got, err := parsePSS([]byte(rollup)); err != nil || got != 4242 {
		t.Errorf("parsePSS = %d, %v; want 4242", got, err)
	}
	if _, err := parsePSS([]byte("Rss: 1 kB\n")); err == nil {
		t.Error("parsePSS without a Pss line succeeded")
	}
}

func TestDescends(t *testing.T) {
	parent := map[int]int{10: 1, 11: 10, 12: 11, 20: 1, 21: 20}
	tests := []struct {
		pid  int
		want bool
	}{{10, true}, {11, true}, {12, true}, {20, false}, {21, false}, {1, false}, {99, false}}
	for _, tt := range tests {
		if got := descends(tt.pid, 10, parent); got != tt.want {
			t.Errorf("descends(%d, 10) = %v, want %v", tt.pid, got, tt.want)
		}
	}
	// A cycle (pid reuse while reading /proc) must end.
	if descends(30, 10, map[int]int{30: 31, 31: 30}) {
		t.Error("descends followed a cycle to a wrong answer")
	}
}

// TestInstancePSS sums a real process tree: this test process stands in for
// the postmaster, with a child.
func TestInstancePSS(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "postmaster.pid"), []byte(strconv.Itoa(os.Getpid())+"\n"+dir+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	alone, n1, err := instancePSS(dir)
	if err != nil {
		t.Fatal(err)
	}
	child := exec.Command("sleep", "30")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { child.Process.Kill(); child.Wait() })
	with, n2, err := instancePSS(dir)
	if err != nil {
		t.Fatal(err)
	}
	if n2 != n1+1 {
		t.Errorf("processes: %d alone, %d with a child; want one more", n1, n2)
	}
	if alone <= 0 || with <= alone {
		t.Errorf("PSS: %d alone, %d with a child; want positive and growing", alone, with)
	}

	if err := os.WriteFile(filepath.Join(dir, "postmaster.pid"), []byte("not a pid\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := instancePSS(dir); err == nil {
		t.Error("instancePSS accepted a malformed postmaster.pid")
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Config)
		ok   bool
	}{
		{"defaults", func(*Config) {}, true},
		{"zero scale", func(c *Config) { c.Scale = 0 }, false},
		{"one sample", func(c *Config) { c.Samples = 1 }, false},
		{"negative large", func(c *Config) { c.LargeScale = -1 }, false},
		{"no idle", func(c *Config) { c.Idle = 0 }, false},
		{"ports past 65535", func(c *Config) { c.PortBase = 65500 }, false},
		{"privileged ports", func(c *Config) { c.PortBase = 80 }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Defaults()
			tt.mod(&c)
			if err := c.Validate(); (err == nil) != tt.ok {
				t.Errorf("Validate() = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

func TestMarkdown(t *testing.T) {
	r := newReport(Defaults(), nil)
	r.log = discard()
	r.add(Figure{Name: "a | b", Goal: "g", Measured: "m\nn", Status: Pass})
	r.add(Figure{Name: "c", Status: Fail})
	r.note("a note")
	md := r.Markdown()
	for _, want := range []string{
		"| figure | goal | measured | ratio | result |",
		`| a \| b | g | m n | – | pass |`,
		"| c | – | – | – | FAIL |",
		"- a note",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	if !r.Failed() {
		t.Error("Failed() = false with a FAIL row")
	}
	r.Figures = r.Figures[:1]
	if r.Failed() {
		t.Error("Failed() = true without a FAIL row")
	}
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestRequestDurations(t *testing.T) {
	log := filepath.Join(t.TempDir(), "log")
	lines := `{"msg":"http request","method":"POST","path":"/instances","status":201,"duration_ms":41}
{"msg":"http request","method":"GET","path":"/instances","status":200,"duration_ms":1}
{"msg":"http request","method":"POST","path":"/instances","status":503,"duration_ms":2}
not json
{"msg":"instance created","method":"POST","path":"/instances","status":201,"duration_ms":5}
{"msg":"http request","method":"POST","path":"/instances","status":201,"duration_ms":39.5}
`
	if err := os.WriteFile(log, []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	s := &server{logPath: log}
	got := s.requestDurations("POST", "/instances")
	want := []float64{41, 39.5}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("requestDurations = %v, want %v", got, want)
	}
}

func TestParseCPUTime(t *testing.T) {
	// A command name with a space and a parenthesis, as postgres's titles
	// may hold; utime 10, stime 5, cutime 300, cstime 40 ticks.
	stat := []byte("4242 (postgres: a) b) S 1 4242 4242 0 -1 4194560 900 0 0 0 10 5 300 40 20 0 1 0 100 0 0")
	got, err := parseCPUTime(stat)
	if err != nil || got != 355*clockTick {
		t.Errorf("parseCPUTime = %v, %v; want %v", got, err, 355*clockTick)
	}
	for _, bad := range []string{"", "1 (x) S 1 2", "1 (x) S 1 2 3 4 5 6 7 8 9 10 x 5 6 7"} {
		if _, err := parseCPUTime([]byte(bad)); err == nil {
			t.Errorf("parseCPUTime(%q) did not fail", bad)
		}
	}
}

package cli

import (
	"fmt"
	"sync"
	"time"

	"github.com/draupnir-db/draupnir/internal/countio"
)

// spinner draws msg with a spinner on stderr until the returned func is
// called, on a terminal only: piped output stays clean.
func (a *app) spinner(msg string) (stop func()) {
	if !a.env.Terminal {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		frames := `|/-\`
		start := time.Now()
		t := time.NewTicker(150 * time.Millisecond)
		defer t.Stop()
		for i := 0; ; i++ {
			fmt.Fprintf(a.stderr, "\r%c %s… %s ", frames[i%len(frames)], msg, time.Since(start).Round(time.Second))
			select {
			case <-done:
				fmt.Fprint(a.stderr, "\r\033[K") // erase the line
				return
			case <-t.C:
			}
		}
	}()
	return func() {
		close(done)
		wg.Wait()
	}
}

// progress draws a bar for p on stderr (terminal only) until stop is called.
func (a *app) progress(p *countio.Reader, total int64, label string) (stop func()) {
	if !a.env.Terminal {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		start := time.Now()
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			fmt.Fprint(a.stderr, "\r"+progressLine(label, p.N(), total, time.Since(start)))
			select {
			case <-done:
				fmt.Fprint(a.stderr, "\r"+progressLine(label, p.N(), total, time.Since(start))+"\n")
				return
			case <-t.C:
			}
		}
	}()
	return func() {
		close(done)
		wg.Wait()
	}
}

// progressLine renders e.g. "base.tar [=======>     ]  58% 600.0 MiB / 1.0 GiB 120.0 MiB/s".
func progressLine(label string, n, total int64, elapsed time.Duration) string {
	const width = 30
	rate := "-"
	if s := elapsed.Seconds(); s > 0 && n > 0 {
		rate = sizeStr(int64(float64(n)/s)) + "/s"
	}
	if total <= 0 {
		return fmt.Sprintf("%s %s %s\033[K", label, sizeStr(n), rate)
	}
	frac := float64(n) / float64(total)
	if frac > 1 {
		frac = 1
	}
	filled := int(frac * width)
	bar := make([]byte, width)
	for i := range bar {
		switch {
		case i < filled:
			bar[i] = '='
		case i == filled:
			bar[i] = '>'
		default:
			bar[i] = ' '
		}
	}
	return fmt.Sprintf("%s [%s] %3.0f%% %s / %s %s\033[K", label, bar, frac*100, sizeStr(n), sizeStr(total), rate)
}

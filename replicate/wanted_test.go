package replicate

import "testing"

// TestWanted: with cluster.copies N an image is kept by the node that made
// it and N-1 others, a stable choice that does not move while a node is
// down; with 0, by every node.
func TestWanted(t *testing.T) {
	names := []string{"a", "b", "c", "d", "e"}
	peers := func(down string) []Peer {
		var ps []Peer
		for _, n := range names {
			ps = append(ps, Peer{Name: n, Down: n == down})
		}
		return ps
	}
	holders := func(copies int, id int64, down string) []string {
		var out []string
		for _, n := range names {
			r := &Replicator{opts: Options{Node: n, Copies: copies}}
			if n != "a" && r.wanted(candidate{ID: id, Origin: "a"}, peers(down)) {
				out = append(out, n)
			}
		}
		return out
	}
	chosen := map[string]bool{}
	for id := int64(1); id <= 40; id++ {
		for copies, want := range map[int]int{0: 4, 1: 0, 2: 1, 3: 2, 9: 4} {
			got := holders(copies, id, "")
			if len(got) != want {
				t.Errorf("image %d, copies %d: %v hold it besides a, want %d others", id, copies, got, want)
			}
			if copies == 2 && len(got) == 1 {
				chosen[got[0]] = true
				// b being down changes nobody's choice.
				if again := holders(2, id, "b"); len(again) != 1 || again[0] != got[0] {
					t.Errorf("image %d: %v with b down, %v with every node up", id, again, got)
				}
			}
		}
	}
	if len(chosen) < 3 {
		t.Errorf("40 images with 2 copies all went to %v: the choice does not spread", chosen)
	}
}

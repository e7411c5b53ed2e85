package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// instancePSS sums the proportional set size of the postmaster that serves
// dataDir and all its descendants. (Not its process group: every postgres
// child calls setsid, so the group holds the postmaster alone.) PSS splits
// shared pages — the postgres binary, shared_buffers — between the processes
// that map them, so the sums over instances add up to the memory they really
// take.
func instancePSS(dataDir string) (pss int64, procs int, err error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0, 0, fmt.Errorf("finding the postmaster: %w", err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	leader, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		return 0, 0, fmt.Errorf("postmaster.pid of %s: %w", dataDir, err)
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, 0, err
	}
	parent := map[int]int{}
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "stat"))
		if err != nil {
			continue // gone meanwhile
		}
		if ppid, ok := parentPID(stat); ok {
			parent[pid] = ppid
		}
	}
	for pid := range parent {
		if !descends(pid, leader, parent) {
			continue
		}
		rollup, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "smaps_rollup"))
		if err != nil {
			continue
		}
		kb, err := parsePSS(rollup)
		if err != nil {
			return 0, 0, fmt.Errorf("smaps_rollup of %d: %w", pid, err)
		}
		pss += kb << 10
		procs++
	}
	if procs == 0 {
		return 0, 0, fmt.Errorf("postmaster %d of %s is not running", leader, dataDir)
	}
	return pss, procs, nil
}

// descends reports whether pid is root or one of its descendants.
func descends(pid, root int, parent map[int]int) bool {
	for i := 0; i < 64 && pid > 1; i++ {
		if pid == root {
			return true
		}
		pid = parent[pid]
	}
	return false
}

// parentPID reads the ppid field of /proc/PID/stat. The command name in
// parentheses may hold spaces and parentheses, so fields count from the last
// ')'.
func parentPID(stat []byte) (int, bool) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, false
	}
	// After ")": state ppid pgrp …
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 2 {
		return 0, false
	}
	ppid, err := strconv.Atoi(f[1])
	return ppid, err == nil
}

// parsePSS returns the "Pss:" line of smaps_rollup in kB.
func parsePSS(rollup []byte) (int64, error) {
	sc := bufio.NewScanner(bytes.NewReader(rollup))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "Pss:" {
			return strconv.ParseInt(f[1], 10, 64)
		}
	}
	return 0, fmt.Errorf("no Pss line")
}

package main

import (
	"fmt"
)

// runSelftest feeds each checker good and planted bad histories: a checker that passes a
// bad one is broken, and that is a violation.
func runSelftest() {
	expect := func(name string, msg string, bad bool) {
		caught := msg != ""
		emit("selftest", "case", name, "caught", caught)
		if caught != bad {
			violation("selftest", fmt.Sprintf("%s: checker said %q", name, msg))
		}
	}
	expect("sequence-good", checkSequence([]int{1, 2, 3}, 3), false)
	expect("sequence-gap", checkSequence([]int{1, 3}, 3), true)
	expect("sequence-duplicate", checkSequence([]int{1, 2, 2, 3}, 3), true)
	expect("sequence-reorder", checkSequence([]int{2, 1, 3}, 3), true)
	expect("sequence-short", checkSequence([]int{1, 2}, 3), true)
	expect("sequence-extra", checkSequence([]int{1, 2, 3, 4}, 3), true)
	expect("counter-good", checkCounter(map[int64]int{0: 1, 1: 1, 2: 1}, 3, 3), false)
	expect("counter-lost", checkCounter(map[int64]int{0: 1, 1: 2}, 2, 3), true)
	expect("counter-final", checkCounter(map[int64]int{0: 1, 1: 1, 2: 1}, 2, 3), true)
	want := []string{"a-p0", "a-p1", "b-p0", "b-p1"}
	expect("observed-good", checkObserved(want, want), false)
	expect("observed-missed", checkObserved([]string{"a-p0", "b-p0", "b-p1"}, want), true)
	expect("observed-back", checkObserved([]string{"a-p0", "a-p1", "b-p0", "a-p1", "b-p1"}, want), true)
	expect("observed-swapped", checkObserved([]string{"a-p1", "a-p0", "b-p0", "b-p1"}, want), true)
}

// Command crondiff answers, for each input line "expr<TAB>zone<TAB>unix-start<TAB>count", what
// Kubernetes CronJob does with the schedule: "invalid <reason>" when its API validation refuses
// it (cron.ParseStandard, and no TZ in the schedule), else the next `count` slots after the
// start as Unix seconds, computed as the CronJob controller does (ParseStandard of
// "TZ=<zone> <expr>", then Next repeatedly; 0 = no slot). Expressions are JSON strings, so any
// whitespace survives the line format.
//
// robfig's Next can loop forever around some offset changes (its midnight correction, e.g.
// Pacific/Apia's skipped day in 2011); a case that takes longer than 250 ms (others take
// microseconds) prints "hang" and ends the process (the goroutine cannot be stopped), and the
// caller starts it again for the remaining cases.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	for in.Scan() {
		parts := strings.Split(in.Text(), "\t")
		if len(parts) != 4 {
			fmt.Fprintf(out, "error bad input line\n")
			continue
		}
		var expr string
		if err := json.Unmarshal([]byte(parts[0]), &expr); err != nil {
			fmt.Fprintf(out, "error %v\n", err)
			continue
		}
		start, _ := strconv.ParseInt(parts[2], 10, 64)
		count, _ := strconv.Atoi(parts[3])
		// answer runs on one goroutine at a time (the map above needs no lock): a hang ends the process.
		done := make(chan string, 1)
		go func() { done <- answer(expr, parts[1], start, count) }()
		select {
		case line := <-done:
			fmt.Fprintln(out, line)
		case <-time.After(250 * time.Millisecond):
			fmt.Fprintln(out, "hang")
			out.Flush()
			os.Exit(3)
		}
	}
}

// locations caches time.LoadLocation, which reads and parses the zone file on every call.
var locations = map[string]*time.Location{}

func answer(expr, zone string, start int64, count int) string {
	sched, err := cron.ParseStandard(expr)
	if err != nil {
		return "invalid " + strings.ReplaceAll(err.Error(), "\n", " ")
	}
	if strings.Contains(expr, "TZ") {
		return "invalid TZ in schedule"
	}
	loc, ok := locations[zone]
	if !ok {
		if loc, err = time.LoadLocation(zone); err != nil {
			return "error " + err.Error()
		}
		locations[zone] = loc
	}
	// What the controller's "TZ=<zone> <expr>" amounts to: the parser sets Location to the zone
	// (descriptors and fields alike); @every ignores zones.
	if spec, ok := sched.(*cron.SpecSchedule); ok {
		spec.Location = loc
	}
	t := time.Unix(start, 0).UTC()
	slots := make([]string, 0, count)
	for i := 0; i < count; i++ {
		t = sched.Next(t)
		if t.IsZero() {
			slots = append(slots, "0")
			break
		}
		slots = append(slots, strconv.FormatInt(t.Unix(), 10))
	}
	return "ok " + strings.Join(slots, " ")
}

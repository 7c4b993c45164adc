// crondiff: the schedule reference of the differential test (testenv/tests/schedule_cronjob.rs):
// robfig/cron v3, as the Kubernetes CronJob API validation and controller run it.
module fleetscore.dev/testenv/crondiff

go 1.26.0

require github.com/robfig/cron/v3 v3.0.1

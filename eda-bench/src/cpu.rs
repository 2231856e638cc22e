//! Where the CPU went during a run: this process, Postgres, RabbitMQ, and
//! everything else on the machine (other people's compilers, the
//! hypervisor's steal), from `/proc` (Linux; zeros elsewhere).
//!
//! On a machine whose cores are all busy, a run's throughput is the cores
//! divided by the CPU time one operation costs, everywhere: these figures
//! say which process the time went to.

/// Clock ticks per second of `/proc`'s counters (`USER_HZ`, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// Cumulative CPU ticks at one instant.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sample {
    machine_busy: u64,
    machine_total: u64,
    me: u64,
    postgres: u64,
    rabbitmq: u64,
}

/// The CPU an operation cost between two samples, in milliseconds per
/// operation, and how busy the machine was.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Usage {
    pub(crate) me: f64,
    pub(crate) postgres: f64,
    pub(crate) rabbitmq: f64,
    pub(crate) other: f64,
    /// Of all the machine's cores, the busy fraction.
    pub(crate) busy: f64,
}

/// The CPU counters now.
pub(crate) fn sample() -> Sample {
    let (machine_busy, machine_total) = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().next().and_then(machine_ticks))
        .unwrap_or((0, 0));
    let me_pid = std::process::id().to_string();
    let (mut me, mut postgres, mut rabbitmq) = (0, 0, 0);
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some((comm, ticks)) = process_ticks(&stat) else {
                continue;
            };
            if pid == me_pid {
                me += ticks;
            } else if comm == "postgres" {
                postgres += ticks;
            } else if comm == "beam.smp" {
                rabbitmq += ticks;
            }
        }
    }
    Sample {
        machine_busy,
        machine_total,
        me,
        postgres,
        rabbitmq,
    }
}

impl Sample {
    /// What `ops` operations cost since `earlier`.
    pub(crate) fn since(&self, earlier: &Sample, ops: u64) -> Usage {
        let per_op = |ticks: u64| ticks as f64 / TICKS_PER_SEC * 1000.0 / ops.max(1) as f64;
        let me = self.me.saturating_sub(earlier.me);
        let postgres = self.postgres.saturating_sub(earlier.postgres);
        let rabbitmq = self.rabbitmq.saturating_sub(earlier.rabbitmq);
        let busy = self.machine_busy.saturating_sub(earlier.machine_busy);
        let total = self.machine_total.saturating_sub(earlier.machine_total);
        Usage {
            me: per_op(me),
            postgres: per_op(postgres),
            rabbitmq: per_op(rabbitmq),
            other: per_op(busy.saturating_sub(me + postgres + rabbitmq)),
            busy: if total == 0 {
                0.0
            } else {
                busy as f64 / total as f64
            },
        }
    }
}

impl Usage {
    /// The mean of several runs' usages.
    pub(crate) fn mean(usages: &[Usage]) -> Usage {
        let n = usages.len().max(1) as f64;
        let sum = |f: fn(&Usage) -> f64| usages.iter().map(f).sum::<f64>() / n;
        Usage {
            me: sum(|u| u.me),
            postgres: sum(|u| u.postgres),
            rabbitmq: sum(|u| u.rabbitmq),
            other: sum(|u| u.other),
            busy: sum(|u| u.busy),
        }
    }

    /// Ours: the bench process, Postgres and RabbitMQ.
    pub(crate) fn total(&self) -> f64 {
        self.me + self.postgres + self.rabbitmq
    }

    /// `0.12 bench + 0.30 pg + 0.05 rmq = 0.47 ms CPU/op (+0.10 other; 97% busy)`.
    pub(crate) fn brief(&self) -> String {
        format!(
            "{:.3} bench + {:.3} pg + {:.3} rmq = {:.3} ms CPU/op (+{:.3} other; machine {:.0}% busy)",
            self.me,
            self.postgres,
            self.rabbitmq,
            self.total(),
            self.other,
            self.busy * 100.0
        )
    }
}

/// `(busy, total)` ticks of the first line of `/proc/stat`:
/// `cpu user nice system idle iowait irq softirq steal …`.
fn machine_ticks(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = v.iter().sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle, total))
}

/// `(comm, utime + stime)` of a `/proc/<pid>/stat`. The command name is in
/// parentheses and may hold spaces and parentheses itself: the fields
/// start after the last `)`.
fn process_ticks(stat: &str) -> Option<(&str, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // Fields 14 and 15 of proc(5); the first after `)` is field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_machine_line() {
        assert_eq!(
            machine_ticks("cpu  100 5 50 800 20 1 2 3 0 0"),
            Some((161, 981))
        );
        assert_eq!(machine_ticks("cpu0 1 2 3 4 5 6 7 8"), None);
        assert_eq!(machine_ticks("cpu 1 2"), None);
    }

    #[test]
    fn reads_a_process_line() {
        let stat = "2961 (beam.smp) S 1 2961 2961 0 -1 4194560 152 0 0 0 1500 230 0 0 20 0 33 0";
        assert_eq!(process_ticks(stat), Some(("beam.smp", 1730)));
        let odd = "7 (a) b (c)) R 1 7 7 0 -1 0 0 0 0 0 11 22 0 0";
        assert_eq!(process_ticks(odd), Some(("a) b (c)", 33)));
        assert_eq!(process_ticks("garbage"), None);
    }

    #[test]
    fn usage_per_operation() {
        let a = Sample {
            machine_busy: 0,
            machine_total: 0,
            me: 0,
            postgres: 0,
            rabbitmq: 0,
        };
        let b = Sample {
            machine_busy: 150,
            machine_total: 200,
            me: 20,
            postgres: 60,
            rabbitmq: 40,
        };
        // 100 ops: 20 ticks = 200 ms = 2 ms per op.
        let u = b.since(&a, 100);
        assert_eq!(
            u,
            Usage {
                me: 2.0,
                postgres: 6.0,
                rabbitmq: 4.0,
                other: 3.0,
                busy: 0.75
            }
        );
        assert_eq!(u.total(), 12.0);
        assert_eq!(Usage::mean(&[u, Usage::default()]).me, 1.0);
    }
}

//! The generator, the sink and the reflector (programs of the lb-bench object), and the
//! live-frames runs that drive the generator.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, PerCpuValues},
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
    util::nr_cpus,
};
use lb_bench::LB_BENCH;
use lb_bench::frame::BenchFrame;

pub const GEN: &str = "bench_gen";
pub const SINK: &str = "bench_sink";
pub const REFLECT: &str = "bench_reflect";
pub const TRACK: &str = "bench_track";

/// `BENCH_SINK` slots (lb-ebpf/src/bin/lb-bench/main.rs).
const SINK_TUNNELLED: u32 = 0;
const SINK_OTHER: u32 = 1;

/// Frames per `BPF_PROG_TEST_RUN` call: short enough (tens of ms) that a timed run ends
/// close to its deadline.
const CHUNK: u32 = 1 << 16;

/// What the sink has counted: frames in IP-in-IP, and all others.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sunk {
    pub tunnelled: u64,
    pub other: u64,
}

impl Sunk {
    pub fn since(self, before: Sunk) -> Sunk {
        Sunk {
            tunnelled: self.tunnelled - before.tunnelled,
            other: self.other - before.other,
        }
    }
}

pub struct Progs {
    ebpf: Ebpf,
    frames: PerCpuArray<MapData, BenchFrame>,
    sink: PerCpuArray<MapData, u64>,
    track: PerCpuArray<MapData, u64>,
}

/// Pin the calling thread to `cpu`: the generator, and the softirqs its transmits raise
/// (the veths' NAPI), then run on that core only.
pub fn pin_to(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; sched_setaffinity(0) is this thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(anyhow!(
            "pinning the generator to CPU {cpu}: {} (pick an online CPU with --cpu)",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

impl Progs {
    /// `flows`: entries of the connection-table baseline's table, as the balancer's.
    pub fn load(flows: u32) -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("BENCH_FLOWS", flows)
            .load(LB_BENCH)
            .context("loading the lb-bench object")?;
        for name in [GEN, SINK, REFLECT, TRACK] {
            let p: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the lb-bench object"))?
                .try_into()?;
            p.load().with_context(|| format!("loading {name}"))?;
        }
        let frames = PerCpuArray::try_from(ebpf.take_map("BENCH_FRAME").context("BENCH_FRAME")?)?;
        let sink = PerCpuArray::try_from(ebpf.take_map("BENCH_SINK").context("BENCH_SINK")?)?;
        let track = PerCpuArray::try_from(ebpf.take_map("BENCH_TRACK").context("BENCH_TRACK")?)?;
        Ok(Progs {
            ebpf,
            frames,
            sink,
            track,
        })
    }

    fn prog(&self, name: &str) -> Result<&Xdp> {
        Ok(self
            .ebpf
            .program(name)
            .with_context(|| format!("program {name} missing"))?
            .try_into()?)
    }

    /// Attach `name` in native mode to `iface` of the calling thread's namespace.
    pub fn attach(&mut self, name: &str, iface: &str) -> Result<()> {
        let p: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing"))?
            .try_into()?;
        p.attach(iface, XdpMode::Driver)
            .with_context(|| format!("attaching {name} to {iface} in native mode"))?;
        Ok(())
    }

    /// Generate `frame`, with `mask` selecting the flows, from now on.
    pub fn set_frame(&mut self, frame: &[u8], mask: u32) -> Result<()> {
        let cur = self.frames.get(&0, 0).context("reading BENCH_FRAME")?;
        let new = cur
            .iter()
            .map(|f| lb_bench::frame::template(frame, mask, f.counter))
            .collect::<Result<Vec<_>, _>>()?;
        self.frames.set(0, PerCpuValues::try_from(new)?, 0)?;
        Ok(())
    }

    /// Frames the generator has built, per CPU (u32 counters: compare with `wrapping_sub`).
    pub fn generated(&self) -> Result<Vec<u32>> {
        Ok(self.frames.get(&0, 0)?.iter().map(|f| f.counter).collect())
    }

    pub fn sunk(&self) -> Result<Sunk> {
        let sum = |slot: u32| -> Result<u64> { Ok(self.sink.get(&slot, 0)?.iter().sum()) };
        Ok(Sunk {
            tunnelled: sum(SINK_TUNNELLED)?,
            other: sum(SINK_OTHER)?,
        })
    }

    /// The connection-table baseline's (hits, misses), summed over CPUs.
    pub fn tracked(&self) -> Result<(u64, u64)> {
        let sum = |slot: u32| -> Result<u64> { Ok(self.track.get(&slot, 0)?.iter().sum()) };
        Ok((
            sum(lb_common::bench::TRACK_HIT)?,
            sum(lb_common::bench::TRACK_MISS)?,
        ))
    }

    /// Live frames out of `ifindex` (in the calling thread's namespace) until `frames` are
    /// sent or `until` has passed, whichever comes first. Returns the frames asked of the
    /// kernel and the wall time.
    pub fn generate(
        &self,
        frame: &[u8],
        ifindex: u32,
        batch: u32,
        frames: u64,
        until: Duration,
    ) -> Result<(u64, Duration)> {
        let prog = self.prog(GEN)?;
        let md = lb_bench::frame::xdp_md(frame.len(), ifindex);
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < frames && start.elapsed() < until {
            let n = (frames - sent).min(CHUNK as u64) as u32;
            prog.test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&md),
                repeat: n,
                attrs: TestRunAttrs::new().xdp_live_frames(batch),
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN in live-frames mode")?;
            sent += n as u64;
        }
        Ok((sent, start.elapsed()))
    }
}

/// Possible CPUs (the length of per-CPU map values).
pub fn cpus() -> Result<usize> {
    nr_cpus().map_err(|(_, e)| anyhow!("reading the possible CPUs: {e}"))
}

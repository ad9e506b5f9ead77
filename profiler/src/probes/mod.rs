//! The probe families. Each module has the same shape: a `Config` built from options,
//! `attach(&mut Ebpf, &Config)`, and `read(&Ebpf)` returning what its maps aggregated.

pub mod alloc;
pub mod cpu;
pub mod futex;
pub mod offcpu;
pub mod probe_point;
pub mod sock;

use aya::{Ebpf, maps::MapError, programs::ProgramError};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{probe}: program {program} is not in the eBPF object")]
    MissingProgram {
        probe: &'static str,
        program: &'static str,
    },
    #[error("{probe}: could not load {program}")]
    Load {
        probe: &'static str,
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("{probe}: could not attach {program} to {target}")]
    Attach {
        probe: &'static str,
        program: &'static str,
        target: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("{probe}: map {map} is missing or of the wrong type")]
    Map {
        probe: &'static str,
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("{probe}: {what}")]
    Other {
        probe: &'static str,
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl ProbeError {
    /// The verifier's log, when the kernel rejected a program: shown with `-v`.
    pub fn verifier_log(&self) -> Option<String> {
        match self {
            Self::Load { source, .. } => match source.as_ref() {
                ProgramError::LoadError { verifier_log, .. } => Some(verifier_log.to_string()),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Looks up a program and converts it to its concrete type.
pub(crate) fn program_mut<'a, T>(
    ebpf: &'a mut Ebpf,
    probe: &'static str,
    program: &'static str,
) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf
        .program_mut(program)
        .ok_or(ProbeError::MissingProgram { probe, program })?;
    prog.try_into().map_err(|source| ProbeError::Load {
        probe,
        program,
        source: Box::new(source),
    })
}

/// Loads `program` and attaches it to the tracepoint `category:event`.
pub(crate) fn attach_tracepoint(
    ebpf: &mut Ebpf,
    probe: &'static str,
    program: &'static str,
    category: &str,
    event: &str,
) -> Result<(), ProbeError> {
    let prog: &mut aya::programs::TracePoint = program_mut(ebpf, probe, program)?;
    prog.load().map_err(|source| ProbeError::Load {
        probe,
        program,
        source: Box::new(source),
    })?;
    prog.attach(category, event)
        .map_err(|source| ProbeError::Attach {
            probe,
            program,
            target: format!("{category}:{event}"),
            source: Box::new(source),
        })?;
    Ok(())
}

/// Looks up a map by name and converts it to a typed view.
pub(crate) fn map<'a, T>(
    ebpf: &'a Ebpf,
    probe: &'static str,
    map: &'static str,
) -> Result<T, ProbeError>
where
    T: TryFrom<&'a aya::maps::Map, Error = MapError>,
{
    typed(ebpf.map(map), probe, map)
}

/// Looks up a map by name and converts it to a typed view that can write.
pub(crate) fn map_mut<'a, T>(
    ebpf: &'a mut Ebpf,
    probe: &'static str,
    map: &'static str,
) -> Result<T, ProbeError>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
{
    typed(ebpf.map_mut(map), probe, map)
}

/// The typed view of a map looked up by name (`raw`), or why there is none.
fn typed<M, T>(raw: Option<M>, probe: &'static str, map: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<M, Error = MapError>,
{
    let raw = raw.ok_or_else(|| ProbeError::Map {
        probe,
        map,
        source: Box::new(MapError::InvalidName { name: map.into() }),
    })?;
    T::try_from(raw).map_err(|source| ProbeError::Map {
        probe,
        map,
        source: Box::new(source),
    })
}

/// Sets a family's one-slot `ARMED` array: its programs account only while it is 1, so they
/// start together once all are attached and stop together before the last read.
pub(crate) fn set_armed(
    ebpf: &mut Ebpf,
    probe: &'static str,
    map: &'static str,
    on: bool,
) -> Result<(), ProbeError> {
    let mut armed: aya::maps::Array<_, u32> = map_mut(ebpf, probe, map)?;
    armed
        .set(0, u32::from(on), 0)
        .map_err(|source| ProbeError::Map {
            probe,
            map,
            source: Box::new(source),
        })
}

/// Programs that close what another opened (a return, a syscall's exit): unloaded last, so no
/// call seen entering loses its return to the unload order. (With the return probe gone
/// first, a target allocating flat out lost thousands of returns in the window.)
const CLOSERS: &[&str] = &[
    profiler_common::alloc::RETURN_PROGRAM,
    profiler_common::alloc::MMAP_EXIT_PROGRAM,
];

/// Detaches and unloads every loaded program, so nothing more is recorded while the maps are
/// read. Programs are also detached when `Ebpf` drops; this just makes it happen first.
pub fn unload_all(ebpf: &mut Ebpf) {
    use aya::programs::Program;
    let mut programs: Vec<_> = ebpf.programs_mut().collect();
    programs.sort_by_key(|(name, _)| CLOSERS.contains(name));
    for (name, program) in programs {
        let result = match program {
            Program::PerfEvent(p) => p.unload(),
            Program::TracePoint(p) => p.unload(),
            Program::UProbe(p) => p.unload(),
            Program::RawTracePoint(p) => p.unload(),
            _ => Ok(()),
        };
        if let Err(err) = result {
            // Not loaded (a family that was not selected) is the common case; nothing to undo.
            log::debug!("unloading {name}: {err}");
        }
    }
}

//! Round trips and signal names of the process service messages.

use super::*;
use crate::admin::{AdminRequest, AdminResponse};
use crate::frame::{decode, encode};
use crate::peer::{PeerMessage, PeerRequest};
use proptest::prelude::*;

fn spec() -> JobSpec {
    JobSpec {
        program: Program::Command,
        argv: vec![b"echo".to_vec(), vec![0xff, b'x']],
        env: vec![b"PATH=/bin".to_vec()],
        cwd: b"/tmp".to_vec(),
        tty: Some(WinSize {
            rows: 24,
            cols: 80,
            xpixel: 0,
            ypixel: 0,
        }),
        detach: false,
        stdin: true,
    }
}

#[test]
fn run_request_and_session_frames_roundtrip() {
    let req = AdminRequest::Proc(ProcRequest::Run(RunRequest {
        spec: spec(),
        placement: Placement::Nodes(vec![3, 4]),
        per_node: 2,
    }));
    let (back, _): (AdminRequest, usize) = decode(&encode(&req).unwrap()).unwrap().unwrap();
    assert!(matches!(back, AdminRequest::Proc(ProcRequest::Run(r)) if r.spec == spec()));
    for d in [
        Down::Stdout {
            job: 3,
            data: b"hi\n".to_vec(),
        },
        Down::Exited {
            job: 1,
            status: ExitStatus::Signal {
                signal: 15,
                core: false,
            },
        },
    ] {
        let (back, _): (Down, usize) = decode(&encode(&d).unwrap()).unwrap().unwrap();
        assert_eq!(back, d);
    }
    let open = PeerMessage {
        id: 0,
        body: crate::peer::PeerBody::Request(PeerRequest::Proc(ProcPeerRequest::Session(
            PeerSession {
                version: SESSION_VERSION,
                spec: spec(),
                creds: Credentials {
                    uid: 1000,
                    gid: 1000,
                    groups: vec![27],
                },
                count: 1,
                caps: JobCaps {
                    can_migrate: true,
                    checkpointable: false,
                },
            },
        ))),
    };
    let (back, _): (PeerMessage, usize) = decode(&encode(&open).unwrap()).unwrap().unwrap();
    assert!(matches!(
        back.body,
        crate::peer::PeerBody::Request(PeerRequest::Proc(ProcPeerRequest::Session(s))) if s.creds.groups == vec![27] && s.caps.can_migrate && !s.caps.checkpointable
    ));
    let adopt = PeerMessage {
        id: 0,
        body: crate::peer::PeerBody::Request(PeerRequest::Proc(ProcPeerRequest::AdoptJob(
            crate::migrate::AdoptJob {
                version: SESSION_VERSION,
                xfer: 0xfeed,
                pid: 4096,
                map: vec![(81234, 4096), (81235, 4097)],
                terminal: Some(crate::migrate::JobTerminal {
                    winsize: WinSize {
                        rows: 45,
                        cols: 123,
                        xpixel: 0,
                        ypixel: 0,
                    },
                    settings: crate::migrate::TermSettings {
                        iflag: 0o2400,
                        oflag: 5,
                        cflag: 0o277,
                        lflag: 0o105073,
                        line: 0,
                        cc: vec![3, 28, 127, 21, 4],
                        ispeed: 15,
                        ospeed: 15,
                    },
                    fg_pgid: 81235,
                }),
                checkpointable: vec![81235],
                detached: true,
            },
        ))),
    };
    let (back, _): (PeerMessage, usize) = decode(&encode(&adopt).unwrap()).unwrap().unwrap();
    assert!(matches!(
        back.body,
        crate::peer::PeerBody::Request(PeerRequest::Proc(ProcPeerRequest::AdoptJob(a))) if a.xfer == 0xfeed && a.map.len() == 2
            && a.terminal.as_ref().is_some_and(|t| t.winsize.cols == 123 && t.settings.cc.len() == 5 && t.fg_pgid == 81235)
    ));
}

#[test]
fn renumbering_and_job_ends() {
    let d = Down::Lost {
        job: 0,
        node: 4,
        reason: "gone".into(),
    };
    assert!(d.ends_job());
    assert_eq!(d.renumbered(7).job(), 7);
    assert!(!Down::StdinAck { job: 0, bytes: 1 }.ends_job());
    // a rejoin moves the job's stream elsewhere: it does not end the job
    let rejoin = Down::Rejoin {
        job: 0,
        node: 3,
        token: 9,
    };
    assert!(!rejoin.ends_job());
    assert_eq!(rejoin.renumbered(2).job(), 2);
    // a part's output mark is renumbered as it passes a hub, and ends nothing
    let mark = Down::OutputMark { job: 0, mark: 77 };
    assert!(!mark.ends_job());
    assert_eq!(mark.renumbered(4), Down::OutputMark { job: 4, mark: 77 });
    let resume = Down::InputResume { job: 0 };
    assert!(!resume.ends_job());
    assert_eq!(resume.renumbered(2).job(), 2);
}

#[test]
fn splice_frames_roundtrip() {
    for u in [
        Up::Splice {
            token: u64::MAX,
            joiner: 1,
        },
        Up::PathEnd { job: 2 },
        Up::OutputWritten { mark: u64::MAX },
    ] {
        let (back, _): (Up, usize) = decode(&encode(&u).unwrap()).unwrap().unwrap();
        assert_eq!(format!("{back:?}"), format!("{u:?}"));
    }
    let join = ProcPeerRequest::JoinSession { token: 7, sent: 9 };
    let (back, _): (ProcPeerRequest, usize) = decode(&encode(&join).unwrap()).unwrap().unwrap();
    assert!(matches!(
        back,
        ProcPeerRequest::JoinSession { token: 7, sent: 9 }
    ));
}

#[test]
fn exit_status_as_a_shell_sees_it() {
    assert_eq!(ExitStatus::from_wait_status(3 << 8), ExitStatus::Code(3));
    assert_eq!(
        ExitStatus::from_wait_status(15),
        ExitStatus::Signal {
            signal: 15,
            core: false
        }
    );
    assert_eq!(ExitStatus::from_wait_status(0x80 | 11).shell_code(), 139);
}

#[test]
fn signal_names_and_numbers() {
    assert_eq!(parse_signal("TERM"), Ok(15));
    assert_eq!(parse_signal("sigkill"), Ok(9));
    assert_eq!(parse_signal("10"), Ok(10));
    assert_eq!(signal_name(28), Some("WINCH"));
    for bad in ["", "FOO", "-1", "65", "SIG"] {
        assert!(parse_signal(bad).is_err(), "{bad}");
    }
}

proptest! {
    // Whatever arrives on a session stream decodes or fails cleanly.
    #[test]
    fn session_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode::<Up>(&bytes);
        let _ = decode::<Down>(&bytes);
        let _ = decode::<AdminResponse>(&bytes);
        let _ = postcard::from_bytes::<Up>(&bytes);
        let _ = postcard::from_bytes::<Down>(&bytes);
        let _ = postcard::from_bytes::<ProcRequest>(&bytes);
        let _ = postcard::from_bytes::<ProcPeerRequest>(&bytes);
        let _ = postcard::from_bytes::<ProcPeerReply>(&bytes);
    }
}

//! Test phones' media: an RTP socket on a chosen 127.0.0.x address that offers PCMU in SDP,
//! sends a tone in real time, and reports what arrives.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use switchyard::media::g711::Codec;
use switchyard::media::{rtp, tone};
use switchyard::sip::message::Message;
use tokio::net::UdpSocket;

/// An RTP socket of a test phone.
pub struct Rtp {
    pub sock: Arc<UdpSocket>,
    pub addr: SocketAddr,
}

impl Rtp {
    pub async fn at(ip: &str) -> Rtp {
        let sock = UdpSocket::bind((ip, 0)).await.unwrap();
        let addr = sock.local_addr().unwrap();
        Rtp {
            sock: Arc::new(sock),
            addr,
        }
    }

    /// An SDP offering (or answering) PCMU at this socket.
    pub fn sdp(&self) -> String {
        Rtp::sdp_at(self.addr, "")
    }

    /// The same with `extra` attribute lines (e.g. `a=sendonly\r\n`).
    pub fn sdp_with(&self, extra: &str) -> String {
        Rtp::sdp_at(self.addr, extra)
    }

    /// An SDP offering PCMU at `addr` (which need not be this socket's), then `extra`.
    pub fn sdp_at(addr: SocketAddr, extra: &str) -> String {
        format!(
            "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\n{extra}",
            ip = addr.ip(),
            port = addr.port()
        )
    }

    /// Sends `frames` 20 ms PCMU frames of a `hz` tone to `to`, paced in real time.
    pub fn send_tone(&self, to: SocketAddr, hz: f32, frames: usize) -> tokio::task::JoinHandle<()> {
        let sock = self.sock.clone();
        tokio::spawn(async move {
            let mut gen = tone::ToneGen::new(&[hz], 8000);
            let ssrc: u32 = rand::random();
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut buf = [0u8; 172];
            for f in 0..frames {
                tick.tick().await;
                let mut pcm = [0i16; 160];
                gen.fill(&mut pcm);
                let h = rtp::write_rtp_header(&mut buf, f == 0, 0, f as u16, f as u32 * 160, ssrc);
                Codec::Pcmu.encode_into(&pcm, &mut buf[h..h + 160]);
                sock.send_to(&buf[..h + 160], to).await.unwrap();
            }
        })
    }

    /// The RTP payloads that arrive within `window`.
    pub async fn listen(&self, window: Duration) -> Vec<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + window;
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(Ok((n, _))) = tokio::time::timeout(
            deadline.saturating_duration_since(tokio::time::Instant::now()),
            self.sock.recv_from(&mut buf),
        )
        .await
        {
            if let Some(h) = rtp::parse_rtp(&buf[..n]) {
                got.push(h.payload(&buf[..n]).to_vec());
            }
        }
        got
    }

    /// Drops whatever arrived so far.
    pub fn drain(&self) {
        let mut buf = [0u8; 2048];
        while self.sock.try_recv_from(&mut buf).is_ok() {}
    }
}

/// The strongest frequency in the PCMU payloads (300 to 3400 Hz), 0 without audio.
pub fn dominant_hz(payloads: &[Vec<u8>]) -> f32 {
    let pcm: Vec<i16> = payloads
        .iter()
        .flatten()
        .map(|&b| Codec::Pcmu.decode(b))
        .collect();
    if pcm.is_empty() {
        return 0.0;
    }
    tone::dominant_frequency(&pcm, 8000, 300.0, 3400.0, 50.0)
}

/// The switch's audio address in an SDP body.
pub fn sdp_addr(m: &Message) -> SocketAddr {
    let sdp = switchyard::sip::sdp::parse(&m.body).expect("SDP");
    let audio = sdp.audio().expect("audio");
    SocketAddr::new(sdp.connection(0).expect("c="), audio.port)
}

//! Envelope-encrypted two-track recordings (AES-256-GCM) and their master keys.
//!
//! Each recording gets a fresh random 256-bit data key, wrapped (AES-256-GCM) by a master key
//! from the [`KeyRing`]; the master key's id is stored in the file, so master keys can rotate
//! while old recordings stay readable. The plaintext is a stereo 16-bit 8 kHz WAV (left = leg
//! A, right = leg B), written as a stream of fixed-size sealed chunks:
//!
//! ```text
//! "SYREC1\0\0"                      magic, 8 bytes
//! u8 len, key id                    the master key's id
//! 12 bytes                          nonce of the key wrap
//! 48 bytes                          data key sealed with the master key (AAD: magic + key id)
//! 8 bytes                           nonce prefix of the chunks
//! chunk*                            CHUNK_PLAINTEXT bytes + 16-byte tag each; the last one
//!                                   shorter (0..CHUNK_PLAINTEXT bytes, so it always exists)
//! ```
//!
//! A chunk's nonce is `prefix || u32 counter` and its AAD is `counter || last flag`, so a
//! truncated file, reordered or dropped chunks, or a missing final chunk all fail to decrypt.
//! The WAV header is written first with placeholder sizes (they are unknown while recording);
//! the reader computes the real ones from the file size and patches them in.
//!
//! A recording is written to `<id>.syrec.tmp` and only renamed to `<id>.syrec` after the last
//! chunk is sealed and the file fsynced, so a `.syrec` is complete unless the disk lied.
//! Pure std + crypto: the relay thread calls it synchronously.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce, Tag};
use sha2::{Digest, Sha256};

/// Gauge: recordings being written now (set by the relay).
pub const RECORDINGS_ACTIVE: &str = "switchyard_recordings_active";
/// Counter: recordings completed (sealed, fsynced and renamed).
pub const RECORDINGS_WRITTEN_TOTAL: &str = "switchyard_recordings_written_total";
/// Counter: recordings that failed or were aborted before completion.
pub const RECORDINGS_FAILED_TOTAL: &str = "switchyard_recordings_failed_total";
/// Counter: encrypted bytes written to recording files.
pub const RECORDING_BYTES_WRITTEN_TOTAL: &str = "switchyard_recording_bytes_written_total";
/// Counter, label `outcome` (`complete`, `failed`, `stray_tmp`): recordings settled by the
/// crash recovery at start-up (`store::recordings::recover`).
pub const RECORDINGS_RECOVERED_TOTAL: &str = "switchyard_recordings_recovered_total";

/// Describe this module's metrics with the installed recorder.
pub fn describe() {
    metrics::describe_gauge!(RECORDINGS_ACTIVE, "Recordings being written now");
    metrics::describe_counter!(
        RECORDINGS_WRITTEN_TOTAL,
        "Recordings completed (sealed, fsynced and renamed)"
    );
    metrics::describe_counter!(
        RECORDINGS_FAILED_TOTAL,
        "Recordings that failed or were aborted before completion"
    );
    metrics::describe_counter!(
        RECORDING_BYTES_WRITTEN_TOTAL,
        metrics::Unit::Bytes,
        "Encrypted bytes written to recording files"
    );
    metrics::describe_counter!(
        RECORDINGS_RECOVERED_TOTAL,
        "Recordings settled by crash recovery at start-up, by outcome"
    );
}

/// File name extension of a complete recording.
pub const EXTENSION: &str = "syrec";
/// File name extension of a recording being written.
pub const TMP_EXTENSION: &str = "syrec.tmp";
/// Plaintext bytes per sealed chunk (all chunks but the last).
pub const CHUNK_PLAINTEXT: usize = 64 * 1024;
/// Sample rate of recordings.
pub const SAMPLE_RATE: u32 = 8000;
/// Length of the WAV header at the start of the plaintext.
pub const WAV_HEADER_LEN: usize = 44;

const MAGIC: &[u8; 8] = b"SYREC1\0\0";
const TAG_LEN: usize = 16;
const WRAP_NONCE_LEN: usize = 12;
const WRAPPED_KEY_LEN: usize = 32 + TAG_LEN;
const PREFIX_LEN: usize = 8;
/// Encrypted size of a full chunk.
const CHUNK_SEALED: usize = CHUNK_PLAINTEXT + TAG_LEN;
/// Directory (under the data directory) of the generated master key.
pub const GENERATED_KEY_DIR: &str = "recording-keys";
/// Id of the generated master key.
pub const GENERATED_KEY_ID: &str = "k1";

/// Errors reading a recording.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// The file names a master key the key ring does not hold.
    #[error("recording is wrapped with unknown key {0:?}")]
    UnknownKey(String),
    /// The file is not a complete, authentic recording.
    #[error("recording is corrupt: {0}")]
    Corrupt(String),
    /// Reading failed.
    #[error("reading recording: {0}")]
    Io(#[from] io::Error),
}

// ---- keys ----

/// A 256-bit master key. Its `Debug` form hides the bytes.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// The master keys by id and the id new recordings are wrapped with.
#[derive(Clone)]
pub struct KeyRing {
    keys: BTreeMap<String, MasterKey>,
    current: String,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .field("current", &self.current)
            .finish()
    }
}

impl KeyRing {
    /// The key ring of `media.recording_keys` (id → `hex:<64 hex>`, `file:<path>` holding 32
    /// raw bytes or 64 hex digits, `env:<VAR>` holding 64 hex digits) with `current`
    /// (`media.recording_key`, default: the last id in order) for new recordings.
    ///
    /// With no keys configured, the key `k1` is loaded from `data_dir/recording-keys/k1`,
    /// generated there (64 hex digits, mode 0600) at the first start.
    pub fn from_config(
        keys: &BTreeMap<String, String>,
        current: Option<&str>,
        data_dir: &Path,
    ) -> io::Result<KeyRing> {
        let mut ring = BTreeMap::new();
        if keys.is_empty() {
            let key = load_or_generate(&data_dir.join(GENERATED_KEY_DIR).join(GENERATED_KEY_ID))?;
            ring.insert(GENERATED_KEY_ID.to_string(), key);
        }
        for (id, spec) in keys {
            if id.is_empty() || id.len() > usize::from(u8::MAX) {
                return Err(invalid(format!("recording key id {id:?}: 1 to 255 bytes")));
            }
            let key = parse_spec(spec)
                .map_err(|e| io::Error::new(e.kind(), format!("recording key {id:?}: {e}")))?;
            ring.insert(id.clone(), key);
        }
        let current = match current {
            Some(c) if ring.contains_key(c) => c.to_string(),
            Some(c) => return Err(invalid(format!("recording key {c:?} is not configured"))),
            None => ring
                .keys()
                .next_back()
                .cloned()
                .ok_or_else(|| invalid("no recording keys".to_string()))?,
        };
        Ok(KeyRing {
            keys: ring,
            current,
        })
    }

    /// The id new recordings are wrapped with.
    pub fn current_id(&self) -> &str {
        &self.current
    }

    /// The master key `id`.
    pub fn get(&self, id: &str) -> Option<&MasterKey> {
        self.keys.get(id)
    }

    fn current_key(&self) -> &MasterKey {
        // from_config only builds rings whose current id is a key.
        &self.keys[&self.current]
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn parse_spec(spec: &str) -> io::Result<MasterKey> {
    if let Some(h) = spec.strip_prefix("hex:") {
        return parse_hex_key(h.trim()).ok_or_else(|| invalid("hex: needs 64 hex digits".into()));
    }
    if let Some(p) = spec.strip_prefix("file:") {
        let bytes = std::fs::read(p).map_err(|e| io::Error::new(e.kind(), format!("{p}: {e}")))?;
        return key_from_file_bytes(&bytes)
            .ok_or_else(|| invalid(format!("{p}: needs 32 raw bytes or 64 hex digits")));
    }
    if let Some(var) = spec.strip_prefix("env:") {
        let text = std::env::var(var).map_err(|_| invalid(format!("${var} is not set")))?;
        return parse_hex_key(text.trim())
            .ok_or_else(|| invalid(format!("${var}: needs 64 hex digits")));
    }
    Err(invalid(
        "a key is hex:<64 hex>, file:<path> or env:<VAR>".into(),
    ))
}

fn key_from_file_bytes(bytes: &[u8]) -> Option<MasterKey> {
    if let Ok(raw) = <[u8; 32]>::try_from(bytes) {
        // 32 bytes that happen to be printable could be neither; raw wins as documented.
        return Some(MasterKey(raw));
    }
    parse_hex_key(std::str::from_utf8(bytes).ok()?.trim())
}

fn parse_hex_key(text: &str) -> Option<MasterKey> {
    if text.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, pair) in text.as_bytes().chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        key[i] = (hi * 16 + lo) as u8;
    }
    Some(MasterKey(key))
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

fn load_or_generate(path: &Path) -> io::Result<MasterKey> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let key: [u8; 32] = rand::random();
    let mut options = OpenOptions::new();
    // create_new: two processes sharing a data directory cannot overwrite each other's key.
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            writeln!(file, "{}", to_hex(&key))?;
            file.sync_all()?;
            if let Some(dir) = path.parent() {
                sync_dir(dir)?;
            }
            tracing::info!(path = %path.display(), "generated recording master key");
            Ok(MasterKey(key))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let bytes = std::fs::read(path)?;
            key_from_file_bytes(&bytes).ok_or_else(|| {
                invalid(format!(
                    "{}: needs 32 raw bytes or 64 hex digits",
                    path.display()
                ))
            })
        }
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    // Directories can only be fsynced through a handle on unix; elsewhere rename is durable
    // enough for our purposes and opening a directory fails.
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

// ---- writing ----

/// The path of the complete recording `id` in `dir`.
pub fn final_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.{EXTENSION}"))
}

/// The path of recording `id` in `dir` while it is being written.
pub fn tmp_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.{TMP_EXTENSION}"))
}

/// A completed recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// `<dir>/<id>.syrec`.
    pub path: PathBuf,
    /// Size of the encrypted file in bytes.
    pub size: u64,
    /// SHA-256 of the encrypted file, lowercase hex.
    pub sha256: String,
    /// Audio length.
    pub duration_ms: u64,
    /// The master key the data key is wrapped with.
    pub key_id: String,
}

/// A recording being written: interleaves the two tracks into a stereo WAV and seals it
/// chunk by chunk into `<id>.syrec.tmp`.
pub struct Recorder {
    file: File,
    tmp: PathBuf,
    dir: PathBuf,
    id: String,
    key_id: String,
    cipher: Aes256Gcm,
    prefix: [u8; PREFIX_LEN],
    counter: u32,
    /// Plaintext of the chunk being filled (capacity CHUNK_SEALED so the tag fits in place).
    chunk: Vec<u8>,
    /// Interleaving scratch, reused across calls.
    frames: Vec<u8>,
    samples: u64,
    size: u64,
    hash: Sha256,
    /// A write failed part-way: the file may hold half a chunk, so nothing more may be
    /// appended and it must never be completed.
    broken: bool,
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("tmp", &self.tmp)
            .field("key_id", &self.key_id)
            .field("samples", &self.samples)
            .finish()
    }
}

impl Recorder {
    /// Start recording `id` into `<dir>/<id>.syrec.tmp` (creating `dir`), wrapped with the
    /// key ring's current key.
    pub fn create(dir: &Path, id: &str, keys: &KeyRing) -> io::Result<Recorder> {
        if id.is_empty() || id.contains(['/', '\\']) || id.starts_with('.') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("recording id {id:?} is not a file name"),
            ));
        }
        std::fs::create_dir_all(dir)?;
        let tmp = tmp_path(dir, id);
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&tmp)?;

        let key_id = keys.current_id().to_string();
        let data_key: [u8; 32] = rand::random();
        let wrap_nonce: [u8; WRAP_NONCE_LEN] = rand::random();
        let prefix: [u8; PREFIX_LEN] = rand::random();
        let mut wrapped = [0u8; WRAPPED_KEY_LEN];
        wrapped[..32].copy_from_slice(&data_key);
        let wrapper = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&keys.current_key().0));
        let tag = wrapper
            .encrypt_in_place_detached(
                Nonce::from_slice(&wrap_nonce),
                &wrap_aad(&key_id),
                &mut wrapped[..32],
            )
            .map_err(|_| io::Error::other("wrapping the data key failed"))?;
        wrapped[32..].copy_from_slice(&tag);

        let mut header = Vec::with_capacity(128);
        header.extend_from_slice(MAGIC);
        header.push(key_id.len() as u8);
        header.extend_from_slice(key_id.as_bytes());
        header.extend_from_slice(&wrap_nonce);
        header.extend_from_slice(&wrapped);
        header.extend_from_slice(&prefix);

        let mut rec = Recorder {
            file,
            tmp,
            dir: dir.to_path_buf(),
            id: id.to_string(),
            key_id,
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&data_key)),
            prefix,
            counter: 0,
            chunk: Vec::with_capacity(CHUNK_SEALED),
            frames: Vec::new(),
            samples: 0,
            size: 0,
            hash: Sha256::new(),
            broken: false,
        };
        rec.write_out(&header)?;
        rec.chunk.extend_from_slice(&wav_header(0));
        Ok(rec)
    }

    /// Append `left.len()` stereo frames (left = leg A, right = leg B). The slices must have
    /// equal lengths. No allocation once the scratch buffer has grown to the largest call.
    ///
    /// After a failed write every later call (and [`Recorder::finish`]) fails too: the file
    /// may end in a partial chunk, so the recording can only be aborted.
    pub fn write_stereo(&mut self, left: &[i16], right: &[i16]) -> io::Result<()> {
        self.check_usable()?;
        if left.len() != right.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "left and right tracks differ in length",
            ));
        }
        let mut frames = std::mem::take(&mut self.frames);
        frames.clear();
        for (l, r) in left.iter().zip(right) {
            frames.extend_from_slice(&l.to_le_bytes());
            frames.extend_from_slice(&r.to_le_bytes());
        }
        let result = self.push(&frames);
        self.frames = frames;
        result?;
        self.samples += left.len() as u64;
        Ok(())
    }

    /// Frames (samples per channel) written so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Seal the last chunk, fsync, rename to `<id>.syrec` and fsync the directory.
    pub fn finish(mut self) -> io::Result<Finished> {
        let result = self.finish_inner();
        match &result {
            Ok(f) => {
                metrics::counter!(RECORDINGS_WRITTEN_TOTAL).increment(1);
                tracing::debug!(id = %self.id, size = f.size, "recording complete");
            }
            Err(e) => {
                metrics::counter!(RECORDINGS_FAILED_TOTAL).increment(1);
                tracing::warn!(id = %self.id, error = %e, "recording failed at finish");
                let _ = std::fs::remove_file(&self.tmp);
            }
        }
        result
    }

    /// Give up: remove the temporary file (counted as failed).
    pub fn abort(self) {
        metrics::counter!(RECORDINGS_FAILED_TOTAL).increment(1);
        let _ = std::fs::remove_file(&self.tmp);
    }

    fn check_usable(&self) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other(
                "an earlier write of this recording failed",
            ));
        }
        Ok(())
    }

    fn finish_inner(&mut self) -> io::Result<Finished> {
        self.check_usable()?;
        // The last chunk is always shorter than a full one (possibly empty): a full chunk
        // is sealed as soon as it fills, so this is never a full one.
        self.seal(true)?;
        self.file.sync_all()?;
        let path = final_path(&self.dir, &self.id);
        std::fs::rename(&self.tmp, &path)?;
        sync_dir(&self.dir)?;
        let sha256 = to_hex(&std::mem::take(&mut self.hash).finalize());
        Ok(Finished {
            path,
            size: self.size,
            sha256,
            duration_ms: self.samples * 1000 / u64::from(SAMPLE_RATE),
            key_id: self.key_id.clone(),
        })
    }

    fn push(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let take = (CHUNK_PLAINTEXT - self.chunk.len()).min(bytes.len());
            self.chunk.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.chunk.len() == CHUNK_PLAINTEXT {
                self.seal(false)?;
            }
        }
        Ok(())
    }

    fn seal(&mut self, last: bool) -> io::Result<()> {
        let nonce = chunk_nonce(&self.prefix, self.counter);
        let tag = self
            .cipher
            .encrypt_in_place_detached(
                Nonce::from_slice(&nonce),
                &chunk_aad(self.counter, last),
                &mut self.chunk,
            )
            .map_err(|_| io::Error::other("sealing a recording chunk failed"))?;
        self.chunk.extend_from_slice(&tag);
        let chunk = std::mem::take(&mut self.chunk);
        let result = self.write_out(&chunk);
        self.chunk = chunk;
        self.chunk.clear();
        result?;
        self.counter = self
            .counter
            .checked_add(1)
            .ok_or_else(|| io::Error::other("recording too long"))?;
        Ok(())
    }

    fn write_out(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Err(e) = self.file.write_all(bytes) {
            self.broken = true;
            return Err(e);
        }
        self.hash.update(bytes);
        self.size += bytes.len() as u64;
        metrics::counter!(RECORDING_BYTES_WRITTEN_TOTAL).increment(bytes.len() as u64);
        Ok(())
    }
}

fn wrap_aad(key_id: &str) -> Vec<u8> {
    let mut aad = MAGIC.to_vec();
    aad.extend_from_slice(key_id.as_bytes());
    aad
}

fn chunk_nonce(prefix: &[u8; PREFIX_LEN], counter: u32) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..PREFIX_LEN].copy_from_slice(prefix);
    n[PREFIX_LEN..].copy_from_slice(&counter.to_be_bytes());
    n
}

fn chunk_aad(counter: u32, last: bool) -> [u8; 5] {
    let c = counter.to_be_bytes();
    [c[0], c[1], c[2], c[3], u8::from(last)]
}

/// A 44-byte PCM WAV header: stereo, 16-bit, 8 kHz, `data_len` bytes of samples.
fn wav_header(data_len: u32) -> [u8; WAV_HEADER_LEN] {
    let mut h = [0u8; WAV_HEADER_LEN];
    let channels: u16 = 2;
    let bits: u16 = 16;
    let block_align = channels * bits / 8;
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&data_len.saturating_add(36).to_le_bytes());
    h[8..12].copy_from_slice(b"WAVE");
    h[12..16].copy_from_slice(b"fmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes()); // PCM
    h[22..24].copy_from_slice(&channels.to_le_bytes());
    h[24..28].copy_from_slice(&SAMPLE_RATE.to_le_bytes());
    h[28..32].copy_from_slice(&(SAMPLE_RATE * u32::from(block_align)).to_le_bytes());
    h[32..34].copy_from_slice(&block_align.to_le_bytes());
    h[34..36].copy_from_slice(&bits.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_len.to_le_bytes());
    h
}

// ---- reading ----

/// Open a recording for reading: checks the header and unwraps the data key. The chunks are
/// authenticated as they are read; see [`RecordingReader`].
pub fn open(path: &Path, keys: &KeyRing) -> Result<RecordingReader, RecordingError> {
    let mut file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut magic = [0u8; 8];
    read_header_part(&mut file, &mut magic)?;
    if &magic != MAGIC {
        return Err(RecordingError::Corrupt(
            "not a recording (bad magic)".into(),
        ));
    }
    let mut len = [0u8; 1];
    read_header_part(&mut file, &mut len)?;
    let mut id = vec![0u8; usize::from(len[0])];
    read_header_part(&mut file, &mut id)?;
    let key_id =
        String::from_utf8(id).map_err(|_| RecordingError::Corrupt("key id is not UTF-8".into()))?;
    let mut wrap_nonce = [0u8; WRAP_NONCE_LEN];
    read_header_part(&mut file, &mut wrap_nonce)?;
    let mut wrapped = [0u8; WRAPPED_KEY_LEN];
    read_header_part(&mut file, &mut wrapped)?;
    let mut prefix = [0u8; PREFIX_LEN];
    read_header_part(&mut file, &mut prefix)?;

    let master = keys
        .get(&key_id)
        .ok_or_else(|| RecordingError::UnknownKey(key_id.clone()))?;
    let unwrapper = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&master.0));
    let (data_key, tag) = wrapped.split_at_mut(32);
    unwrapper
        .decrypt_in_place_detached(
            Nonce::from_slice(&wrap_nonce),
            &wrap_aad(&key_id),
            data_key,
            Tag::from_slice(tag),
        )
        .map_err(|_| {
            RecordingError::Corrupt(format!("data key does not unwrap with key {key_id:?}"))
        })?;

    let header_len =
        (MAGIC.len() + 1 + key_id.len() + WRAP_NONCE_LEN + WRAPPED_KEY_LEN + PREFIX_LEN) as u64;
    let body = file_len - header_len;
    let full_chunks = body / CHUNK_SEALED as u64;
    let rest = body % CHUNK_SEALED as u64;
    if rest < TAG_LEN as u64 {
        return Err(RecordingError::Corrupt(
            "the final chunk is missing (truncated file)".into(),
        ));
    }
    let chunks = full_chunks + 1;
    if chunks > u64::from(u32::MAX) {
        return Err(RecordingError::Corrupt("too many chunks".into()));
    }
    let plaintext_len = full_chunks * CHUNK_PLAINTEXT as u64 + (rest - TAG_LEN as u64);
    if plaintext_len < WAV_HEADER_LEN as u64 {
        return Err(RecordingError::Corrupt("shorter than a WAV header".into()));
    }
    let data_len = plaintext_len - WAV_HEADER_LEN as u64;
    let data_len = u32::try_from(data_len)
        .map_err(|_| RecordingError::Corrupt("longer than a WAV file can be".into()))?;
    Ok(RecordingReader {
        file,
        cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(data_key)),
        prefix,
        next: 0,
        chunks: chunks as u32,
        last_len: (rest - TAG_LEN as u64) as usize,
        plaintext_len,
        data_len,
        key_id,
        done: false,
    })
}

fn read_header_part(file: &mut File, buf: &mut [u8]) -> Result<(), RecordingError> {
    file.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            RecordingError::Corrupt("truncated header".into())
        } else {
            RecordingError::Io(e)
        }
    })
}

/// Decrypt and authenticate every chunk of the recording at `path`, including the final-chunk
/// flag; returns the plaintext (WAV) length in bytes.
pub fn verify(path: &Path, keys: &KeyRing) -> Result<u64, RecordingError> {
    let reader = open(path, keys)?;
    let total = reader.plaintext_len();
    let mut seen = 0u64;
    for chunk in reader {
        seen += chunk?.len() as u64;
    }
    if seen != total {
        return Err(RecordingError::Corrupt(format!(
            "decrypted {seen} bytes, expected {total}"
        )));
    }
    Ok(seen)
}

/// An open recording: yields its decrypted WAV in chunks (the first one starts with the
/// header, its sizes patched), each authenticated before it is yielded. After an error it
/// yields nothing more.
pub struct RecordingReader {
    file: File,
    cipher: Aes256Gcm,
    prefix: [u8; PREFIX_LEN],
    next: u32,
    chunks: u32,
    last_len: usize,
    plaintext_len: u64,
    data_len: u32,
    key_id: String,
    done: bool,
}

impl fmt::Debug for RecordingReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordingReader")
            .field("key_id", &self.key_id)
            .field("chunks", &self.chunks)
            .field("next", &self.next)
            .finish()
    }
}

impl RecordingReader {
    /// Length of the whole WAV (header included): the HTTP `Content-Length`.
    pub fn plaintext_len(&self) -> u64 {
        self.plaintext_len
    }

    /// Audio length, from the file size.
    pub fn duration_ms(&self) -> u64 {
        u64::from(self.data_len) / 4 * 1000 / u64::from(SAMPLE_RATE)
    }

    /// The master key id the recording is wrapped with.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    fn read_chunk(&mut self) -> Result<Vec<u8>, RecordingError> {
        let index = self.next;
        let last = index + 1 == self.chunks;
        let len = if last { self.last_len } else { CHUNK_PLAINTEXT };
        let mut buf = vec![0u8; len + TAG_LEN];
        self.file.read_exact(&mut buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                RecordingError::Corrupt(format!("chunk {index} is truncated"))
            } else {
                RecordingError::Io(e)
            }
        })?;
        let (text, tag) = buf.split_at_mut(len);
        let nonce = chunk_nonce(&self.prefix, index);
        self.cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(&nonce),
                &chunk_aad(index, last),
                text,
                Tag::from_slice(tag),
            )
            .map_err(|_| RecordingError::Corrupt(format!("chunk {index} fails authentication")))?;
        buf.truncate(len);
        if index == 0 {
            if buf.len() < WAV_HEADER_LEN || &buf[0..4] != b"RIFF" || &buf[8..12] != b"WAVE" {
                return Err(RecordingError::Corrupt("no WAV header".into()));
            }
            buf[..WAV_HEADER_LEN].copy_from_slice(&wav_header(self.data_len));
        }
        self.next += 1;
        Ok(buf)
    }
}

impl Iterator for RecordingReader {
    type Item = Result<Vec<u8>, RecordingError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.next >= self.chunks {
            return None;
        }
        let item = self.read_chunk();
        if item.is_err() {
            self.done = true;
        } else if self.next == self.chunks {
            // Trailing bytes after the final chunk cannot happen with the size arithmetic in
            // `open`, but a file that grew since is not what was authenticated.
            let mut probe = [0u8; 1];
            match self.file.read(&mut probe) {
                Ok(0) => {}
                Ok(_) => {
                    self.done = true;
                    return Some(Err(RecordingError::Corrupt(
                        "bytes after the final chunk".into(),
                    )));
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(RecordingError::Io(e)));
                }
            }
        }
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(ids: &[(&str, u8)], current: Option<&str>) -> KeyRing {
        let keys: BTreeMap<String, String> = ids
            .iter()
            .map(|(id, b)| (id.to_string(), format!("hex:{}", to_hex(&[*b; 32]))))
            .collect();
        KeyRing::from_config(&keys, current, Path::new("/nonexistent")).unwrap()
    }

    fn tracks(frames: usize) -> (Vec<i16>, Vec<i16>) {
        let left = (0..frames).map(|i| (i % 30000) as i16).collect();
        let right = (0..frames).map(|i| -((i % 20000) as i16)).collect();
        (left, right)
    }

    /// Record `frames` frames in pieces of `piece`, return the Finished and expected WAV.
    fn record(
        dir: &Path,
        id: &str,
        keys: &KeyRing,
        frames: usize,
        piece: usize,
    ) -> (Finished, Vec<u8>) {
        let (left, right) = tracks(frames);
        let mut rec = Recorder::create(dir, id, keys).unwrap();
        let mut at = 0;
        while at < frames {
            let end = (at + piece).min(frames);
            rec.write_stereo(&left[at..end], &right[at..end]).unwrap();
            at = end;
        }
        assert_eq!(rec.samples(), frames as u64);
        let finished = rec.finish().unwrap();
        let mut wav = wav_header((frames * 4) as u32).to_vec();
        for i in 0..frames {
            wav.extend_from_slice(&left[i].to_le_bytes());
            wav.extend_from_slice(&right[i].to_le_bytes());
        }
        (finished, wav)
    }

    fn decrypt_all(path: &Path, keys: &KeyRing) -> Result<Vec<u8>, RecordingError> {
        let mut out = Vec::new();
        for chunk in open(path, keys)? {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    #[test]
    fn round_trips_of_several_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ring(&[("a", 1)], None);
        let per_chunk = CHUNK_PLAINTEXT / 4;
        // Sizes around chunk boundaries: the header makes (CHUNK - 44) / 4 frames fill the
        // first chunk exactly (not a whole number), so also exact plaintext multiples.
        let exact_two = (2 * CHUNK_PLAINTEXT - WAV_HEADER_LEN) / 4; // 44 is a multiple of 4
        for (n, frames) in [
            0,
            1,
            160,
            per_chunk - 11,
            per_chunk,
            exact_two,
            exact_two + 1,
            40_000,
        ]
        .into_iter()
        .enumerate()
        {
            let id = format!("r{n}");
            let (finished, wav) = record(dir.path(), &id, &keys, frames, 160);
            assert_eq!(finished.path, final_path(dir.path(), &id));
            assert!(!tmp_path(dir.path(), &id).exists());
            let bytes = std::fs::read(&finished.path).unwrap();
            assert_eq!(finished.size, bytes.len() as u64);
            assert_eq!(finished.sha256, to_hex(&Sha256::digest(&bytes)));
            assert_eq!(finished.duration_ms, frames as u64 * 1000 / 8000);
            assert_eq!(finished.key_id, "a");
            assert_eq!(
                decrypt_all(&finished.path, &keys).unwrap(),
                wav,
                "{frames} frames"
            );
            assert_eq!(verify(&finished.path, &keys).unwrap(), wav.len() as u64);
            let reader = open(&finished.path, &keys).unwrap();
            assert_eq!(reader.plaintext_len(), wav.len() as u64);
            assert_eq!(reader.duration_ms(), finished.duration_ms);
        }
        // exact_two frames: plaintext is exactly two chunks, so an empty final chunk follows.
        let f = final_path(dir.path(), "r5");
        assert_eq!(open(&f, &keys).unwrap().count(), 3);
    }

    #[test]
    fn header_sizes_are_patched() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ring(&[("a", 1)], None);
        let (finished, _) = record(dir.path(), "h", &keys, 20_000, 333);
        let first = open(&finished.path, &keys)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let u32_at = |i: usize| u32::from_le_bytes(first[i..i + 4].try_into().unwrap());
        assert_eq!(u32_at(40), 80_000, "data size");
        assert_eq!(u32_at(4), 80_036, "RIFF size");
        assert_eq!(u32_at(24), 8000);
        assert_eq!(u16::from_le_bytes([first[22], first[23]]), 2);
    }

    #[test]
    fn tampering_fails_verification() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ring(&[("a", 1)], None);
        let (finished, _) = record(dir.path(), "t", &keys, 40_000, 160);
        let good = std::fs::read(&finished.path).unwrap();
        let bad = dir.path().join("bad.syrec");
        let header = 8 + 1 + 1 + 12 + 48 + 8;
        let check = |bytes: &[u8], what: &str| {
            std::fs::write(&bad, bytes).unwrap();
            let err = verify(&bad, &keys).unwrap_err();
            assert!(matches!(err, RecordingError::Corrupt(_)), "{what}: {err}");
        };
        check(&good[..good.len() - 1], "truncated by one byte");
        check(&good[..good.len() - 1000], "truncated mid-chunk");
        // Cut exactly after the second full chunk: the final chunk is gone.
        check(&good[..header + 2 * CHUNK_SEALED], "dropped last chunk");
        check(&good[..header + CHUNK_SEALED], "only the first chunk");
        check(
            &good[..header + CHUNK_SEALED + TAG_LEN],
            "first chunk and a would-be empty final chunk",
        );
        let mut flipped = good.clone();
        flipped[header + 100] ^= 1;
        check(&flipped, "flipped byte in the first chunk");
        let mut flipped = good.clone();
        let n = flipped.len() - 5;
        flipped[n] ^= 0x80;
        check(&flipped, "flipped byte in the tag of the last chunk");
        let mut flipped = good.clone();
        flipped[20] ^= 1;
        check(&flipped, "flipped byte in the wrapped key");
        // Swap the first two full chunks.
        let mut swapped = good.clone();
        let (a, b) = (header, header + CHUNK_SEALED);
        swapped[a..b].copy_from_slice(&good[b..b + CHUNK_SEALED]);
        swapped[b..b + CHUNK_SEALED].copy_from_slice(&good[a..b]);
        check(&swapped, "reordered chunks");
        check(&good[..30], "truncated header");
        // Appended bytes shift the size arithmetic and fail too.
        let mut longer = good.clone();
        longer.extend_from_slice(&[0u8; 7]);
        check(&longer, "appended bytes");
        assert!(verify(&finished.path, &keys).is_ok());
    }

    #[test]
    fn unknown_key_id_fails() {
        let dir = tempfile::tempdir().unwrap();
        let (finished, _) = record(dir.path(), "k", &ring(&[("a", 1)], None), 100, 100);
        let other = ring(&[("b", 1)], None);
        match verify(&finished.path, &other) {
            Err(RecordingError::UnknownKey(id)) => assert_eq!(id, "a"),
            other => panic!("expected UnknownKey, got {other:?}"),
        }
        // Same id, different key bytes: the wrap does not open.
        let wrong = ring(&[("a", 2)], None);
        assert!(matches!(
            verify(&finished.path, &wrong),
            Err(RecordingError::Corrupt(_))
        ));
    }

    #[test]
    fn rotation_keeps_old_recordings_readable() {
        let dir = tempfile::tempdir().unwrap();
        let old = ring(&[("k1", 1)], None);
        let (finished, wav) = record(dir.path(), "old", &old, 1000, 160);
        let rotated = ring(&[("k1", 1), ("k2", 2)], None);
        assert_eq!(rotated.current_id(), "k2");
        assert_eq!(decrypt_all(&finished.path, &rotated).unwrap(), wav);
        let (new, _) = record(dir.path(), "new", &rotated, 1000, 160);
        assert_eq!(new.key_id, "k2");
        assert_eq!(ring(&[("k1", 1), ("k2", 2)], Some("k1")).current_id(), "k1");
        // The new one needs k2.
        assert!(matches!(
            verify(&new.path, &old),
            Err(RecordingError::UnknownKey(_))
        ));
    }

    #[test]
    fn abort_removes_the_tmp_file_and_unequal_tracks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ring(&[("a", 1)], None);
        let mut rec = Recorder::create(dir.path(), "x", &keys).unwrap();
        assert!(tmp_path(dir.path(), "x").exists());
        assert!(rec.write_stereo(&[1, 2], &[1]).is_err());
        rec.write_stereo(&[1, 2], &[3, 4]).unwrap();
        rec.abort();
        assert!(!tmp_path(dir.path(), "x").exists());
        assert!(!final_path(dir.path(), "x").exists());
        assert!(Recorder::create(dir.path(), "../x", &keys).is_err());
    }

    #[test]
    fn a_failed_write_poisons_the_recorder() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ring(&[("a", 1)], None);
        let mut rec = Recorder::create(dir.path(), "p", &keys).unwrap();
        rec.broken = true; // as after a write_all that failed part-way (disk full)
        assert!(rec.write_stereo(&[1], &[2]).is_err());
        assert!(rec.finish().is_err());
        assert!(!final_path(dir.path(), "p").exists(), "never completed");
        assert!(!tmp_path(dir.path(), "p").exists(), "tmp removed");
    }

    #[test]
    fn generated_key_persists_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let empty = BTreeMap::new();
        let first = KeyRing::from_config(&empty, None, dir.path()).unwrap();
        assert_eq!(first.current_id(), "k1");
        let path = dir.path().join("recording-keys/k1");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let second = KeyRing::from_config(&empty, None, dir.path()).unwrap();
        assert_eq!(first.get("k1").unwrap().0, second.get("k1").unwrap().0);
        // A recording made under the first load opens under the second.
        let rec_dir = dir.path().join("rec");
        let (finished, wav) = record(&rec_dir, "p", &first, 500, 160);
        assert_eq!(decrypt_all(&finished.path, &second).unwrap(), wav);
        // Debug never shows key bytes.
        let shown = format!("{second:?} {:?}", second.get("k1").unwrap());
        assert!(!shown.contains(text.trim()) && !shown.contains(&text.trim()[..8]));
    }

    #[test]
    fn key_specs() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        std::fs::write(&raw, [7u8; 32]).unwrap();
        let hex = dir.path().join("hex");
        std::fs::write(&hex, format!("{}\n", to_hex(&[7u8; 32]))).unwrap();
        let mut keys = BTreeMap::new();
        keys.insert("raw".to_string(), format!("file:{}", raw.display()));
        keys.insert("hex".to_string(), format!("file:{}", hex.display()));
        let ring = KeyRing::from_config(&keys, Some("hex"), dir.path()).unwrap();
        assert_eq!(ring.get("raw").unwrap().0, [7u8; 32]);
        assert_eq!(ring.get("hex").unwrap().0, [7u8; 32]);
        assert_eq!(ring.current_id(), "hex");
        assert!(
            !dir.path().join("recording-keys").exists(),
            "no key generated"
        );
        for bad in ["hex:abc", "nope:1", "env:SWITCHYARD_TEST_SURELY_UNSET_VAR"] {
            let mut keys = BTreeMap::new();
            keys.insert("x".to_string(), bad.to_string());
            assert!(
                KeyRing::from_config(&keys, None, dir.path()).is_err(),
                "{bad}"
            );
        }
        assert!(KeyRing::from_config(&keys, Some("missing"), dir.path()).is_err());
    }
}

//! Every setting, as a flag and an environment variable (names from the product
//! specification's settings).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Requests with more images than this have their status streamed (the default of
/// `IMGBATCH_STATUS_STREAM_THRESHOLD`). Below it the body is built in memory: that is faster
/// (three reads, not three per 500 rows and a second pass over the images; measured on SQLite,
/// release build, wrk -c4 on pending requests: 300 images 230 vs 181 req/s, 1,000 images 74 vs
/// 56, 2,000 images 37 vs 29), the body is under about 0.5 MB and the rows behind it a few MB,
/// and a finished request's body is cached, so clients polling small requests (the status
/// benchmark) keep today's path untouched. Above it, memory per poll grows with the request
/// (a 30,000-image poll peaks at +33 MiB on Postgres and +77 to +113 MiB on SQLite built in
/// memory, +2 to +5 MiB streamed), and the streamed path's extra cost shrinks (6,000 images:
/// 12.3 vs 11.2 req/s).
pub const DEFAULT_STATUS_STREAM_THRESHOLD: u64 = 2_000;

#[derive(Debug, Parser)]
#[command(
    name = "imgbatch",
    version,
    about = "CSV of product images in, compressed JPEGs out"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings for `serve`, also accepted when no subcommand is given.
    #[command(flatten)]
    pub serve: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API and the workers (the default).
    Serve(Box<Config>),
    /// Apply database migrations and exit.
    Migrate(DatabaseArgs),
    /// Print the webhook signing secret (generating and storing it if there is none yet).
    WebhookSecret(DatabaseArgs),
    /// Upload a CSV to a running service; with --wait, follow it to the end.
    #[command(after_help = SUBMIT_EXIT_CODES)]
    Submit(SubmitArgs),
    /// Show the status of a request on a running service.
    Status(StatusArgs),
    /// Download every output of a request and its report: as outputs.zip, or unpacked into a
    /// folder.
    Download(DownloadArgs),
    /// List your requests on a running service, newest first.
    List(ListArgs),
    /// Cancel a pending or processing request: its images not started yet never start.
    Cancel(RequestArgs),
    /// Put a request's failed images back in the queue (and a cancelled request's unstarted ones).
    Retry(RetryArgs),
}

/// `imgbatch submit --help`: the exit codes (client::Outcome).
const SUBMIT_EXIT_CODES: &str = "\
Exit codes:
  0    uploaded; with --wait, every image completed
  1    an error (the CSV refused, the service unreachable, a refused API key, ...)
  2    with --wait: the request ended completed_with_errors (some images failed)
  3    with --wait: the request ended failed (no image completed)
  4    with --wait: the request was cancelled
  130  with --wait: interrupted (Ctrl-C); the request goes on, follow it with
       `imgbatch status <request-id>`";

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// `sqlite:` or `postgres:` URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://data/imgbatch.db"
    )]
    pub database_url: String,
}

/// Where a client command finds the service.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Base URL of the service.
    #[arg(long, env = "IMGBATCH_SERVER", default_value = "http://127.0.0.1:3000")]
    pub server: String,
    /// API key, when the service requires one.
    #[arg(long, env = "IMGBATCH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct SubmitArgs {
    /// The CSV to upload.
    pub csv: PathBuf,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Webhook target for this request.
    #[arg(long)]
    pub webhook_url: Option<String>,
    /// Idempotency key, to make a retried submit return the first request.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Output quality, 1-100 on JPEG's scale (default: the service's IMGBATCH_QUALITY).
    #[arg(long)]
    pub quality: Option<String>,
    /// Outputs fit inside this width in pixels, aspect ratio kept, never enlarged.
    #[arg(long)]
    pub max_width: Option<String>,
    /// Outputs fit inside this height in pixels, aspect ratio kept, never enlarged.
    #[arg(long)]
    pub max_height: Option<String>,
    /// Output format: jpeg, webp, or auto (the smaller of the two, per image).
    #[arg(long)]
    pub format: Option<String>,
    /// Follow the request with a progress bar until it settles; the exit code tells how it
    /// ended (see below).
    #[arg(long)]
    pub wait: bool,
    /// With --wait: save output.csv here when done.
    #[arg(long, requires = "wait")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The request ID returned by the upload.
    pub request_id: String,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Print the full JSON status body instead of a summary.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Only requests with this status (pending, processing, completed, completed_with_errors,
    /// failed, cancelled).
    #[arg(long)]
    pub status: Option<String>,
    /// Requests to show (1 to 100).
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Start after this page (the cursor printed below a full page).
    #[arg(long)]
    pub cursor: Option<String>,
    /// Print the JSON page instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RequestArgs {
    /// The request ID returned by the upload.
    pub request_id: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RetryArgs {
    /// The request ID returned by the upload.
    pub request_id: String,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Retry only the failed images with these error codes (comma-separated, e.g.
    /// timeout,http_error); default: every failed image.
    #[arg(long, value_delimiter = ',')]
    pub error_codes: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct DownloadArgs {
    /// The request ID returned by the upload.
    pub request_id: String,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Where to: a path ending in `.zip` gets the archive as it is; any other path is a folder
    /// (created if needed) that gets the outputs and report.csv unpacked. Default:
    /// `<request-id>-outputs.zip` here.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    #[command(flatten)]
    pub db: DatabaseArgs,

    /// Listen address; the first log line names the bound address.
    #[arg(long, env = "IMGBATCH_BIND", default_value = "127.0.0.1:3000")]
    pub bind: SocketAddr,

    /// Base of the output image URLs (default: http:// + the bound address).
    #[arg(long, env = "IMGBATCH_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// A folder, or s3://bucket/prefix.
    #[arg(long, env = "IMGBATCH_STORAGE", default_value = "data/images")]
    pub storage: String,

    /// Public base URL of objects in S3 storage (default: the endpoint and bucket, path-style).
    #[arg(long, env = "IMGBATCH_STORAGE_PUBLIC_URL")]
    pub storage_public_url: Option<String>,

    /// Serve the /api endpoints (false: a worker-only process that serves health and metrics).
    #[arg(long, env = "IMGBATCH_API", default_value_t = true, action = clap::ArgAction::Set)]
    pub api: bool,

    /// JPEG quality of the outputs (1-100).
    #[arg(long, env = "IMGBATCH_QUALITY", default_value_t = 50,
          value_parser = clap::value_parser!(u8).range(1..=100))]
    pub quality: u8,

    /// Default size box for uploads that name none: outputs fit inside this width, aspect
    /// ratio kept, never enlarged (1-65535; unset: no limit).
    #[arg(long, env = "IMGBATCH_MAX_WIDTH",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::domain::MAX_BOX_SIDE)))]
    pub max_width: Option<u32>,

    /// Default size box for uploads that name none: outputs fit inside this height (1-65535;
    /// unset: no limit).
    #[arg(long, env = "IMGBATCH_MAX_HEIGHT",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::domain::MAX_BOX_SIDE)))]
    pub max_height: Option<u32>,

    /// Default output format for uploads that name none: jpeg, webp, or auto (per image, the
    /// smaller of the two at similar visual quality).
    #[arg(long, env = "IMGBATCH_FORMAT", default_value = "jpeg",
          value_parser = |s: &str| s.parse::<crate::domain::FormatChoice>())]
    pub format: crate::domain::FormatChoice,

    /// Never serve an output larger than its input: keep a lossless re-encode of a JPEG input,
    /// or the input's own bytes without metadata, instead (false: every output is a JPEG).
    #[arg(long, env = "IMGBATCH_NEVER_LARGER", default_value_t = true, action = clap::ArgAction::Set)]
    pub never_larger: bool,

    /// Speed versus size of JPEG outputs: 0, the fastest, is libjpeg's tables as libjpeg-turbo
    /// uses them; 1 a table tuned for perceived quality; 2 adds rate-distortion (trellis)
    /// quantisation; 3, the default, also writes a progressive file where that is smaller.
    /// Each level is calibrated so that outputs still look at least as good as libjpeg-turbo's
    /// at the same quality setting (docs/performance.md).
    #[arg(long, env = "IMGBATCH_EFFORT", default_value = "3",
          value_parser = |s: &str| s.parse::<crate::jpeg::Effort>())]
    pub effort: crate::jpeg::Effort,

    /// Webhook for uploads that name none.
    #[arg(long, env = "IMGBATCH_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// `whsec_…` signing secret (generated once and kept in the database when unset).
    #[arg(long, env = "IMGBATCH_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// Delays between webhook delivery attempts, comma-separated.
    #[arg(long, env = "IMGBATCH_WEBHOOK_RETRY_SCHEDULE", default_value = "5s,5m,30m,2h,5h,10h,10h",
          value_parser = parse_schedule)]
    pub webhook_retry_schedule: Schedule,

    /// Let image and webhook URLs reach loopback and private addresses (development and tests).
    #[arg(long, env = "IMGBATCH_ALLOW_PRIVATE_NETWORKS", default_value_t = false,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub allow_private_networks: bool,

    /// Networks that image and webhook URLs may reach even though they are not public
    /// (comma-separated CIDRs, e.g. an internal image server: 10.1.2.0/24).
    #[arg(long, env = "IMGBATCH_ALLOWED_NETWORKS", value_delimiter = ',')]
    pub allowed_networks: Vec<ipnet::IpNet>,

    /// Requests a second each client may make to /api, with bursts of twice that; 0 turns the
    /// limit off. A client is its API key when keys are set (and the request carries a valid
    /// one), else its address (see --trusted-proxies).
    #[arg(long, env = "IMGBATCH_RATE_LIMIT", default_value_t = 100)]
    pub rate_limit: u32,

    /// Proxies whose `Forwarded` / `X-Forwarded-For` headers are believed for the client's
    /// address (comma-separated addresses or CIDRs, e.g. 10.0.0.0/8). Default: none, so the
    /// client is the TCP peer.
    #[arg(long, env = "IMGBATCH_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_net)]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// The header the trusted proxies write the client's address into; only that one is read.
    #[arg(long, env = "IMGBATCH_FORWARDED_HEADER", value_enum, default_value_t = ForwardedHeader::XForwardedFor)]
    pub forwarded_header: ForwardedHeader,

    /// Comma-separated bearer tokens; when set, every /api call needs one.
    #[arg(
        long,
        env = "IMGBATCH_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,

    /// Status bodies of requests with more images than this are streamed from the database a
    /// page at a time (chunked, never cached) instead of built whole in memory (and cached
    /// once finished).
    #[arg(long, env = "IMGBATCH_STATUS_STREAM_THRESHOLD",
          default_value_t = DEFAULT_STATUS_STREAM_THRESHOLD)]
    pub status_stream_threshold: u64,

    /// Delete finished requests (their rows, outputs and webhook deliveries) this long after
    /// they last changed, e.g. `30d`; off by default (keep forever). A deleted request answers
    /// 410 for as long again, then 404.
    #[arg(long, env = "IMGBATCH_RETENTION", value_parser = parse_duration)]
    pub retention: Option<Duration>,

    /// How often the janitor looks for requests to delete (with `IMGBATCH_RETENTION`).
    #[arg(long, env = "IMGBATCH_JANITOR_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    pub janitor_interval: Duration,
    /// Webhooks of requests with at most this many images carry the full status body; above
    /// it, a summary (status, progress, savings) with links to the status, output.csv,
    /// report.csv and outputs.zip, so the body stays small (receivers often refuse bodies over
    /// 1 MB; a 20,000-image status body is about 7 MB).
    #[arg(
        long,
        env = "IMGBATCH_WEBHOOK_FULL_BODY_MAX_IMAGES",
        default_value_t = 1000
    )]
    pub webhook_full_body_max_images: u64,

    /// Log format: human-readable text or one JSON object a line.
    #[arg(long, env = "IMGBATCH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub limits: Limits,

    #[command(flatten)]
    pub workers: WorkerSettings,
}

/// Bounds on what one client can make the service do.
#[derive(Debug, Clone, Args)]
pub struct Limits {
    /// Largest accepted upload body, in bytes (checked while streaming).
    #[arg(long, env = "IMGBATCH_MAX_UPLOAD_BYTES", default_value_t = 20 * 1024 * 1024)]
    pub max_upload_bytes: usize,
    /// Most products (rows) in one CSV.
    #[arg(long, env = "IMGBATCH_MAX_ROWS", default_value_t = 50_000)]
    pub max_rows: usize,
    /// Most image URLs in one row.
    #[arg(long, env = "IMGBATCH_MAX_URLS_PER_PRODUCT", default_value_t = 50)]
    pub max_urls_per_product: usize,
    /// Longest accepted URL, in bytes.
    #[arg(long, env = "IMGBATCH_MAX_URL_LENGTH", default_value_t = 2048)]
    pub max_url_length: usize,
    /// Largest image download, in bytes.
    #[arg(long, env = "IMGBATCH_MAX_IMAGE_BYTES", default_value_t = 50 * 1024 * 1024)]
    pub max_image_bytes: u64,
    /// Most pixels in one image (width x height), checked before decoding.
    #[arg(long, env = "IMGBATCH_MAX_IMAGE_PIXELS", default_value_t = 40_000_000)]
    pub max_image_pixels: u64,
    /// Time allowed to connect to an image origin.
    #[arg(long, env = "IMGBATCH_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Time allowed for one whole image download.
    #[arg(long, env = "IMGBATCH_DOWNLOAD_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub download_timeout: Duration,
    /// Time allowed to decode and encode one image.
    #[arg(long, env = "IMGBATCH_DECODE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub decode_timeout: Duration,
    /// Time allowed for one webhook delivery attempt.
    #[arg(long, env = "IMGBATCH_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub webhook_timeout: Duration,
    /// How long a streamed status body waits for a client that stops reading before it gives
    /// up (and cuts the connection), so a stalled client cannot hold a database snapshot open.
    #[arg(long, env = "IMGBATCH_STATUS_STREAM_IDLE_TIMEOUT", default_value = "30s",
          value_parser = parse_duration)]
    pub status_stream_idle_timeout: Duration,
    /// Most redirects followed for one image (each hop is checked again).
    #[arg(long, env = "IMGBATCH_MAX_REDIRECTS", default_value_t = 5)]
    pub max_redirects: usize,
}

/// How the background workers run.
#[derive(Debug, Clone, Args)]
pub struct WorkerSettings {
    /// Image jobs in flight in this process (downloads overlap); 0 serves the API only.
    #[arg(long, env = "IMGBATCH_WORKERS", default_value_t = 8)]
    pub workers: usize,
    /// Images decoded and encoded at once (default: the number of cores).
    #[arg(long, env = "IMGBATCH_CPU_WORKERS")]
    pub cpu_workers: Option<usize>,
    /// Bytes image jobs may hold at once: a quarter for downloaded bodies, the rest for decode
    /// and encode buffers (estimated from each image's header). An image larger than its share
    /// still runs, alone. Sets the process's peak memory under a batch of large images.
    #[arg(long, env = "IMGBATCH_MEMORY_BUDGET", default_value_t = 144 * 1024 * 1024)]
    pub memory_budget: u64,
    /// Attempts per image before a transient failure becomes final.
    #[arg(long, env = "IMGBATCH_MAX_ATTEMPTS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
    /// First retry delay of an image; doubled each attempt, with jitter.
    #[arg(long, env = "IMGBATCH_RETRY_BASE", default_value = "2s", value_parser = parse_duration)]
    pub retry_base: Duration,
    /// How long a claimed job is leased; renewed while it runs.
    #[arg(long, env = "IMGBATCH_LEASE", default_value = "60s", value_parser = parse_duration)]
    pub lease: Duration,
    /// Fallback poll interval when no wake-up arrives.
    #[arg(long, env = "IMGBATCH_POLL_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// How long a graceful shutdown waits for in-flight jobs before releasing them.
    #[arg(long, env = "IMGBATCH_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

impl WorkerSettings {
    pub fn cpu_workers(&self) -> usize {
        self.cpu_workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
            .max(1)
    }
}

impl Config {
    /// Defaults for everything, as if no flag or variable were given; tests start from here.
    pub fn defaults() -> Self {
        Cli::parse_from(["imgbatch"]).serve
    }

    /// The options of an upload that names none.
    pub fn default_options(&self) -> crate::domain::ImageOptions {
        crate::domain::ImageOptions::new(self.quality, self.max_width, self.max_height, self.format)
            .expect("the settings' parsers keep every option in range")
    }

    /// Which addresses image and webhook requests may reach.
    pub fn address_policy(&self) -> crate::net::AddressPolicy {
        crate::net::AddressPolicy::new(self.allow_private_networks, self.allowed_networks.clone())
    }

    /// Where local outputs live, when storage is a folder.
    pub fn storage_dir(&self) -> Option<PathBuf> {
        (!self.storage.starts_with("s3://")).then(|| PathBuf::from(&self.storage))
    }
}

/// Delays between webhook attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule(pub Vec<Duration>);

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Which header trusted proxies name the client in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, …` (nginx, HAProxy, AWS ALB, most ingresses).
    #[value(name = "x-forwarded-for")]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    #[value(name = "forwarded")]
    Forwarded,
}

/// A network as a CIDR (`10.0.0.0/8`) or a single address (`10.1.2.3`).
pub fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not an IP address or CIDR network"))
}

pub fn parse_schedule(s: &str) -> Result<Schedule, String> {
    let delays = s
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(parse_duration)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Schedule(delays))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::defaults();
        assert_eq!(c.db.database_url, "sqlite://data/imgbatch.db");
        assert_eq!(c.bind.to_string(), "127.0.0.1:3000");
        assert_eq!(c.storage, "data/images");
        assert_eq!(c.quality, 50);
        assert!(!c.allow_private_networks);
        assert!(c.api_keys.is_empty());
        assert_eq!(c.webhook_retry_schedule.0.len(), 7);
        assert_eq!(c.webhook_retry_schedule.0[1], Duration::from_secs(300));
        assert_eq!(c.retention, None);
        assert_eq!(c.janitor_interval, Duration::from_secs(60));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(c.webhook_full_body_max_images, 1000);
    }

    #[test]
    fn schedule_accepts_milliseconds() {
        let s = parse_schedule("200ms, 1s").unwrap();
        assert_eq!(
            s.0,
            vec![Duration::from_millis(200), Duration::from_secs(1)]
        );
        assert!(parse_schedule("5 parsecs").is_err());
    }

    #[test]
    fn flags_parse_after_a_subcommand_and_without_one() {
        let cli = Cli::parse_from(["imgbatch", "--quality", "70", "--allow-private-networks"]);
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.quality, 70);
        assert!(cli.serve.allow_private_networks);
        let cli = Cli::parse_from(["imgbatch", "serve", "--bind", "127.0.0.1:0"]);
        match cli.command {
            Some(Command::Serve(c)) => assert_eq!(c.bind.port(), 0),
            other => panic!("expected serve, got {other:?}"),
        }
        assert!(Cli::try_parse_from(["imgbatch", "--quality", "0"]).is_err());
        let cli = Cli::parse_from(["imgbatch", "--effort", "1"]);
        assert_eq!(cli.serve.effort.level(), 1);
        assert_eq!(
            Cli::parse_from(["imgbatch"]).serve.effort,
            crate::jpeg::Effort::DEFAULT
        );
        assert_eq!(Cli::parse_from(["imgbatch"]).serve.effort.level(), 3);
        assert!(Cli::try_parse_from(["imgbatch", "--effort", "4"]).is_err());
    }
}

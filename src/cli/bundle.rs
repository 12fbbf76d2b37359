//! `cedargate bundle`: make, show and sign policy bundles ([`crate::policy::bundle`]).
//!
//! - `bundle build DIR -o FILE [--revision N] [--sign KEY]`: validates the set in `DIR`
//!   exactly as `serve` loads it and writes it as a bundle (the revision defaults to the
//!   current Unix time, so later builds have higher revisions).
//! - `bundle inspect FILE [--public-key PUB] [--format json]`: verifies the hashes (and the
//!   signature with a key), loads the set, and shows the manifest; exit 1 when anything
//!   does not verify or validate.
//! - `bundle keygen -o KEY [--algorithm ed25519|ecdsa-p256-sha256]`: a new signing key
//!   (PKCS#8 PEM, mode 0600) and its public key beside it (`KEY.pub`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::policy::bundle::{self, keys};

#[derive(Debug, Args)]
pub struct BundleArgs {
    #[command(subcommand)]
    pub command: BundleCommand,
}

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Validate a policy directory and write it as a bundle.
    Build {
        /// The policy directory.
        dir: PathBuf,
        /// The bundle file to write (`.tar.gz`).
        #[arg(long, short)]
        output: PathBuf,
        /// The bundle's revision (default: the current Unix time).
        #[arg(long)]
        revision: Option<u64>,
        /// Sign the manifest with this private key (PKCS#8 PEM, Ed25519 or ECDSA P-256).
        #[arg(long)]
        sign: Option<PathBuf>,
    },
    /// Verify a bundle and show its manifest.
    Inspect {
        file: PathBuf,
        /// Require and verify a signature by this public key (PEM).
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// `text` for people, `json` for tools.
        #[arg(long, value_parser = ["text", "json"], default_value = "text")]
        format: String,
    },
    /// Make a signing key and write its public key to `<output>.pub`.
    Keygen {
        #[arg(long, short)]
        output: PathBuf,
        #[arg(long, value_parser = ["ed25519", "ecdsa-p256-sha256"], default_value = "ed25519")]
        algorithm: String,
    },
}

/// Why a bundle command failed.
#[derive(Debug, thiserror::Error)]
pub enum BundleCliError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Key {
        path: PathBuf,
        #[source]
        source: keys::KeyError,
    },
    #[error("{0}")]
    Bundle(#[from] bundle::BundleError),
}

pub fn run(args: BundleArgs) -> ExitCode {
    let result = match args.command {
        BundleCommand::Build {
            dir,
            output,
            revision,
            sign,
        } => build(&dir, &output, revision, sign.as_deref()),
        BundleCommand::Inspect {
            file,
            public_key,
            format,
        } => inspect(&file, public_key.as_deref(), format == "json"),
        BundleCommand::Keygen { output, algorithm } => keygen(&output, &algorithm),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cedargate bundle: {err}");
            ExitCode::FAILURE
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, BundleCliError> {
    std::fs::read(path).map_err(|source| BundleCliError::Io {
        path: path.to_owned(),
        source,
    })
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), BundleCliError> {
    // A new file renamed into place: a watcher never reads half a bundle.
    let partial = path.with_extension("partial");
    std::fs::write(&partial, bytes)
        .and_then(|()| std::fs::rename(&partial, path))
        .map_err(|source| BundleCliError::Io {
            path: path.to_owned(),
            source,
        })
}

fn build(
    dir: &Path,
    output: &Path,
    revision: Option<u64>,
    sign: Option<&Path>,
) -> Result<(), BundleCliError> {
    let key = sign
        .map(|path| {
            keys::SigningKey::from_pem(&read(path)?).map_err(|source| BundleCliError::Key {
                path: path.to_owned(),
                source,
            })
        })
        .transpose()?;
    let revision =
        revision.unwrap_or_else(|| u64::try_from(crate::telemetry::unix_now()).unwrap_or_default());
    let bytes = bundle::build(dir, revision, key.as_ref())?;
    write(output, &bytes)?;
    say!(
        "wrote {} ({} bytes): revision {revision}, {}",
        output.display(),
        bytes.len(),
        if key.is_some() { "signed" } else { "unsigned" }
    );
    Ok(())
}

fn inspect(file: &Path, public_key: Option<&Path>, json: bool) -> Result<(), BundleCliError> {
    let key = public_key
        .map(|path| {
            keys::PublicKey::from_pem(&read(path)?).map_err(|source| BundleCliError::Key {
                path: path.to_owned(),
                source,
            })
        })
        .transpose()?;
    let opened = bundle::open(&read(file)?, file, key.as_ref())?;
    let manifest = &opened.manifest;
    let signature = match (opened.signed, key.is_some()) {
        (true, _) => "verified",
        (false, _) => "not checked (no --public-key)",
    };
    if json {
        say!(
            "{}",
            serde_json::json!({
                "file": file.display().to_string(),
                "manifest": manifest,
                "signature": if opened.signed { "verified" } else { "not_checked" },
                "policies": opened.snapshot.policies.policies().count(),
                "valid": true,
            })
        );
        return Ok(());
    }
    say!("bundle   {}", file.display());
    say!("format   {}", manifest.format);
    say!("revision {}", manifest.revision);
    say!("version  {}", manifest.version);
    say!("created  {}", manifest.created);
    say!("signature {signature}");
    say!(
        "policies {} (valid against the bundle's schema)",
        opened.snapshot.policies.policies().count()
    );
    for (name, hash) in &manifest.files {
        say!("  {hash}  {name}");
    }
    Ok(())
}

fn keygen(output: &Path, algorithm: &str) -> Result<(), BundleCliError> {
    let algorithm = match algorithm {
        "ecdsa-p256-sha256" => keys::Algorithm::EcdsaP256Sha256,
        _ => keys::Algorithm::Ed25519,
    };
    let key_error = |source| BundleCliError::Key {
        path: output.to_owned(),
        source,
    };
    let private = keys::SigningKey::generate(algorithm).map_err(key_error)?;
    let public = keys::SigningKey::from_pem(private.as_bytes())
        .and_then(|key| key.public_pem())
        .map_err(key_error)?;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| BundleCliError::Io { path, source }
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(output).map_err(io(output))?;
    std::io::Write::write_all(&mut file, private.as_bytes()).map_err(io(output))?;
    let mut public_path = output.as_os_str().to_owned();
    public_path.push(".pub");
    let public_path = PathBuf::from(public_path);
    std::fs::write(&public_path, public).map_err(io(&public_path))?;
    say!(
        "wrote the signing key {} (keep it secret) and its public key {}",
        output.display(),
        public_path.display()
    );
    Ok(())
}

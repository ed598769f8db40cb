//! Data-plane commands: `seeds import`, `status`, `verify`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};

use crate::store::import::{import, AnswerExtract, ImportOptions, InputFormat};
use crate::store::parquet_io::WriteOptions;
use crate::store::status::{status, verify, ShardStatus};

/// Exit code when the shard is locked by another worker (EX_TEMPFAIL).
pub const EXIT_LOCKED: u8 = 75;
/// Exit code of `verify` when a file does not match its manifest.
pub const EXIT_VERIFY_FAILED: u8 = 2;

#[derive(Debug, Args)]
pub struct SeedsArgs {
    #[command(subcommand)]
    pub command: SeedsCommand,
}

#[derive(Debug, Subcommand)]
pub enum SeedsCommand {
    /// Convert JSON / JSONL seed sets to seed Parquet (schemas/seeds.json).
    Import(ImportArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Json,
    Jsonl,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AnswerExtractArg {
    /// GSM8K `#### N` answers become N (commas removed); other answers kept.
    Auto,
    /// Keep answers verbatim.
    None,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Input files, imported in order into one output.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output seed Parquet file (written atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// Field holding the prompt (dotted paths like `a.0.b` work for every field option).
    #[arg(long, default_value = "prompt")]
    pub prompt_field: String,
    /// Field holding a stable id; without it ids are blake3 of the normalized prompt.
    #[arg(long)]
    pub id_field: Option<String>,
    /// Field holding the reference answer.
    #[arg(long)]
    pub answer_field: Option<String>,
    /// Field holding an existing response (Open-O1 input).
    #[arg(long)]
    pub response_field: Option<String>,
    /// Field holding a system prompt.
    #[arg(long)]
    pub system_field: Option<String>,
    /// Field appended to the prompt after a blank line when non-empty (self-instruct input).
    #[arg(long)]
    pub input_field: Option<String>,
    /// Fields copied into the `meta` JSON object (repeatable).
    #[arg(long)]
    pub meta_field: Vec<String>,
    /// Value of the `source` column.
    #[arg(long)]
    pub source: Option<String>,
    /// Value of the `lang` column.
    #[arg(long)]
    pub lang: Option<String>,
    /// Input format; by default `.jsonl`/`.ndjson` are JSONL, anything else JSON.
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    #[arg(long, value_enum, default_value = "auto")]
    pub answer_extract: AnswerExtractArg,
    /// Import at most this many seeds (for samples).
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 10_000)]
    pub row_group_rows: usize,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Job output directory.
    pub out: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Job output directory.
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

pub fn run_seeds(a: SeedsArgs) -> anyhow::Result<ExitCode> {
    match a.command {
        SeedsCommand::Import(a) => run_import(a),
    }
}

fn run_import(a: ImportArgs) -> anyhow::Result<ExitCode> {
    let o = ImportOptions {
        prompt_field: a.prompt_field,
        id_field: a.id_field,
        answer_field: a.answer_field,
        response_field: a.response_field,
        system_field: a.system_field,
        input_field: a.input_field,
        meta_fields: a.meta_field,
        source: a.source,
        lang: a.lang,
        format: a.format.map(|f| match f {
            FormatArg::Json => InputFormat::Json,
            FormatArg::Jsonl => InputFormat::Jsonl,
        }),
        answer_extract: match a.answer_extract {
            AnswerExtractArg::Auto => AnswerExtract::Auto,
            AnswerExtractArg::None => AnswerExtract::None,
        },
        limit: a.limit,
        write: WriteOptions {
            row_group_rows: a.row_group_rows,
            ..WriteOptions::default()
        },
    };
    let rep = import(&a.inputs, &a.out, &o)?;
    for s in rep.skipped.iter().take(20) {
        eprintln!("skipped {s}");
    }
    if rep.skipped.len() > 20 {
        eprintln!("... and {} more skipped", rep.skipped.len() - 20);
    }
    println!(
        "{}: {} seeds, {} bytes, blake3 {} ({} records skipped)",
        a.out.display(),
        rep.seeds,
        rep.file.bytes,
        rep.file.blake3,
        rep.skipped.len()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn run_status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let rep = status(&a.out)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<14} {:>13}  {:<28} {:>8} {:>8} {:>8}",
        "kind", "shard", "state", "seeds", "accepted", "rejected"
    );
    for s in &rep.shards {
        let state = match &s.status {
            ShardStatus::Pending { .. } => "pending".to_string(),
            ShardStatus::Running { holder, .. } => format!("running ({holder})"),
            ShardStatus::Done => "done".to_string(),
            ShardStatus::Corrupt { reason } => format!("corrupt: {reason}"),
        };
        println!(
            "{:<14} {:>13}  {:<28} {:>8} {:>8} {:>8}",
            s.kind,
            s.shard.suffix(),
            state,
            s.seeds,
            s.accepted,
            s.rejected
        );
    }
    let t = &rep.totals;
    println!(
        "total: {} shards ({} done, {} running, {} pending, {} corrupt); {} seeds, {} accepted, {} rejected",
        t.shards, t.done, t.running, t.pending, t.corrupt, t.seeds, t.accepted, t.rejected
    );
    Ok(if t.corrupt > 0 {
        ExitCode::from(EXIT_VERIFY_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

pub fn run_verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let rep = verify(&a.out)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        for p in &rep.problems {
            println!("MISMATCH {p}");
        }
        println!(
            "{} files, {} bytes checked, {} problems",
            rep.files_checked,
            rep.bytes_checked,
            rep.problems.len()
        );
    }
    Ok(if rep.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_VERIFY_FAILED)
    })
}

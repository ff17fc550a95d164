//! Administration at the command line: accounts (`hutong access …`), keys (`hutong keys
//! …`) and the audit trail (`hutong audit …`). Every change made here is audited like a
//! change through the API, as the platform's operator at the command line.

use std::io::Read;

use anyhow::Context;
use clap::{Args, Subcommand};
use hutong_access::accounts::{Client, User};
use hutong_access::principal::{Kind, Role, Scopes};
use hutong_server::Settings;

#[derive(Subcommand)]
pub enum AccessCmd {
    /// Register an institution's system (or a platform service) as an OAuth2 client; prints
    /// its secret once.
    AddClient(AddClient),
    /// Give a client a new secret (the previous one keeps working until the next rotation).
    RotateSecret {
        #[arg(long)]
        id: String,
    },
    /// Stop a client from getting tokens.
    DisableClient {
        #[arg(long)]
        id: String,
    },
    /// List clients.
    Clients,
    /// Register a clinician or operator; the password is read from standard input.
    AddUser(AddUser),
    /// Set a user's password (read from standard input).
    SetPassword {
        #[arg(long)]
        username: String,
    },
    /// Lift a lockout (`client:ID`, `user:NAME`).
    Unlock { subject: String },
    /// Issue an access token directly from the keyring (for scripts and measurements; whoever
    /// can read the keyring can do this, which is why the keyring is owner-only).
    Token(TokenArgs),
}

#[derive(Args)]
pub struct TokenArgs {
    /// system, clinician, resident, operator or platform.
    #[arg(long, default_value = "platform")]
    kind: String,
    #[arg(long, default_value = "hutong-cli")]
    subject: String,
    #[arg(long)]
    institution: Option<String>,
    /// The resident's Person id.
    #[arg(long)]
    person: Option<String>,
    #[arg(long = "role")]
    roles: Vec<String>,
    /// SMART scopes (default: what the kind gets when signing in).
    #[arg(long)]
    scope: Option<String>,
    #[arg(long, default_value_t = 1)]
    hours: i64,
}

#[derive(Args)]
pub struct AddClient {
    /// The client id.
    #[arg(long)]
    id: String,
    /// Reserve resource ids beginning with this prefix for the client's institution (its
    /// own id scheme, e.g. `d01-`): no other source may create a resource under such an id.
    /// An institution's unified social credit code followed by `-` is its own already.
    #[arg(long = "id-prefix")]
    id_prefix: Vec<String>,
    /// The institution it submits for, as its source URI (urn:hutong:org:<USCC>).
    #[arg(long)]
    institution: Option<String>,
    #[arg(long)]
    name: Option<String>,
    /// SMART scopes it may be granted.
    #[arg(long, default_value = "system/*.cruds")]
    scope: String,
    /// A platform service (sees everything; for higher-level platforms and analytics).
    #[arg(long)]
    platform: bool,
    /// May book appointments that open the booked institution's access (appointment
    /// platform).
    #[arg(long)]
    booking: bool,
}

#[derive(Args)]
pub struct AddUser {
    #[arg(long)]
    username: String,
    /// clinician or operator.
    #[arg(long, default_value = "clinician")]
    kind: String,
    #[arg(long)]
    name: String,
    /// The clinician's institution (source URI).
    #[arg(long)]
    institution: Option<String>,
    /// The clinician's Practitioner id.
    #[arg(long)]
    practitioner: Option<String>,
    /// Operator roles: identity-steward, quality-officer, auditor, privacy-officer,
    /// administrator.
    #[arg(long = "role")]
    roles: Vec<String>,
}

#[derive(Subcommand)]
pub enum KeysCmd {
    /// Add a new token and checkpoint signing key (older ones still verify).
    RotateSigning,
    /// Add a new data key, then re-encrypt identity data under it.
    RotateData,
    /// Re-encrypt identity data under the current data key and rebuild its keyed index
    /// values.
    Reencrypt,
    /// Print the public signing keys (JWK Set).
    Public,
}

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Prove the audit trail intact, or name the first entry altered, inserted or deleted
    /// (exit status 1); entries after the last signed checkpoint are reported as unproven
    /// (exit status 2: `hutong audit checkpoint` signs them, as the server does every
    /// `checkpoint_seconds`).
    Verify {
        /// A witness's copy of the checkpoints (`GET /audit/checkpoints`, or `hutong audit
        /// checkpoints`): each must still be in the store, unchanged.
        #[arg(long)]
        witness: Option<std::path::PathBuf>,
    },
    /// Sign a checkpoint of every partition that moved.
    Checkpoint,
    /// Print every signed checkpoint as JSON, for a witness to keep outside the platform.
    Checkpoints,
    /// Print recent entries (all, or about one person) as AuditEvents.
    Show {
        #[arg(long)]
        person: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

fn password_from_stdin() -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("HUTONG_PASSWORD") {
        return Ok(p);
    }
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .context("reading the password from standard input")?;
    Ok(s.trim_end_matches(['\n', '\r']).to_string())
}

/// The audit entry of an administrative act at the command line.
fn entry(action: &str, what: String) -> hutong_audit::Entry {
    hutong_audit::Entry {
        ts: hutong_fhir::date::now_ms(),
        action: action.into(),
        outcome: 200,
        who: hutong_server::guard::who(&hutong_access::Principal::platform(&format!(
            "hutong (command line, user {})",
            std::env::var("USER").unwrap_or_else(|_| "unknown".into())
        ))),
        purpose: Some("HSYSADMIN".into()),
        request: what,
        ..Default::default()
    }
}

pub fn access(s: &Settings, cmd: AccessCmd) -> anyhow::Result<()> {
    let engine = crate::engine(s)?;
    let a = &engine.access.accounts;
    let (action, what) = match cmd {
        AccessCmd::AddClient(c) => {
            let kind = if c.platform {
                Kind::Platform
            } else {
                Kind::System
            };
            let secret = a.add_client(&Client {
                client_id: c.id.clone(),
                kind,
                institution: c.institution.clone(),
                name: c.name.clone().unwrap_or_else(|| c.id.clone()),
                scopes: Scopes::parse(&c.scope),
                booking: c.booking,
            })?;
            for p in &c.id_prefix {
                let source = c
                    .institution
                    .as_deref()
                    .context("--id-prefix needs the client's --institution")?;
                a.claim_namespace(p, source)?;
                println!("ids beginning with {p} are reserved for {source}");
            }
            println!("client_id:     {}", c.id);
            println!("client_secret: {secret}");
            println!("(shown once: only a hash is kept)");
            (
                "add-client",
                format!("add client {} for {:?}", c.id, c.institution),
            )
        }
        AccessCmd::RotateSecret { id } => {
            let secret = a.rotate_client_secret(&id)?;
            println!("client_secret: {secret}");
            ("rotate-secret", format!("rotate the secret of client {id}"))
        }
        AccessCmd::DisableClient { id } => {
            engine.access.disable_client(&id)?;
            ("disable-client", format!("disable client {id}"))
        }
        AccessCmd::Clients => {
            for c in a.clients()? {
                println!(
                    "{:<24} {:<9} {:<44} {}",
                    c.client_id,
                    c.kind.as_str(),
                    c.institution.unwrap_or_default(),
                    c.scopes
                );
            }
            return Ok(());
        }
        AccessCmd::AddUser(u) => {
            let kind = match u.kind.as_str() {
                "clinician" => Kind::Clinician,
                "operator" => Kind::Operator,
                k => anyhow::bail!("--kind is clinician or operator, not {k}"),
            };
            let mut roles = Vec::new();
            for r in &u.roles {
                roles.push(Role::parse(r).with_context(|| format!("unknown role {r}"))?);
            }
            let password = password_from_stdin()?;
            a.add_user(
                &User {
                    username: u.username.clone(),
                    kind,
                    name: u.name.clone(),
                    institution: u.institution.clone(),
                    practitioner: u.practitioner.clone(),
                    roles,
                },
                &password,
            )?;
            println!("User {} added.", u.username);
            ("add-user", format!("add {} {}", u.kind, u.username))
        }
        AccessCmd::SetPassword { username } => {
            a.set_password(&username, &password_from_stdin()?)?;
            ("set-password", format!("set the password of {username}"))
        }
        AccessCmd::Unlock { subject } => {
            a.unlock(&subject)?;
            ("unlock", format!("unlock {subject}"))
        }
        AccessCmd::Token(t) => {
            let (kind, default_scope) = match t.kind.as_str() {
                "system" => (Kind::System, "system/*.cruds"),
                "clinician" => (Kind::Clinician, "user/*.rs"),
                "resident" => (Kind::Resident, "patient/*.rs"),
                "operator" => (Kind::Operator, "user/*.rs"),
                "platform" => (Kind::Platform, "system/*.cruds"),
                k => anyhow::bail!(
                    "--kind is system, clinician, resident, operator or platform, not {k}"
                ),
            };
            let mut roles = Vec::new();
            for r in &t.roles {
                roles.push(Role::parse(r).with_context(|| format!("unknown role {r}"))?);
            }
            let p = hutong_access::Principal {
                kind,
                subject: t.subject.clone(),
                name: None,
                institution: t.institution.clone(),
                practitioner: None,
                person: t.person.clone(),
                roles,
                scopes: Scopes::parse(t.scope.as_deref().unwrap_or(default_scope)),
                booking: false,
            };
            println!("{}", engine.access.tokens.issue_for(&p, t.hours * 3600));
            ("token", format!("issue a token for {}", p.label()))
        }
    };
    engine.audit.record(entry(action, what));
    engine.audit.flush(std::time::Duration::from_secs(10));
    // What the command line wrote is signed at once: no unsigned tail waits for a server.
    hutong_server::consent::trail::checkpoint(&engine)
        .map_err(|e| anyhow::anyhow!(e.message().to_string()))?;
    Ok(())
}

pub fn keys(s: &Settings, cmd: KeysCmd) -> anyhow::Result<()> {
    let (store, keys) = hutong_server::open_store(&s.location(), s.keys_file.as_deref())?;
    let what = match cmd {
        KeysCmd::Public => {
            let k = keys.read().unwrap_or_else(|e| e.into_inner());
            println!("{}", serde_json::to_string_pretty(&k.jwks())?);
            return Ok(());
        }
        KeysCmd::RotateSigning => {
            let kid = keys
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .rotate_signing()?;
            println!("New signing key {kid}; API nodes pick it up when restarted.");
            format!("rotate signing key to {kid}")
        }
        KeysCmd::RotateData => {
            let kid = keys
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .rotate_data()?;
            let n = hutong_server::reprotect(&store)?;
            println!("New data key {kid}; {n} identity resources re-encrypted under it.");
            format!("rotate data key to {kid}")
        }
        KeysCmd::Reencrypt => {
            let n = hutong_server::reprotect(&store)?;
            println!("{n} identity resources re-encrypted under the current data key.");
            "re-encrypt identity data".to_string()
        }
    };
    store.append_audit(&[entry("keys", what).to_store()])?;
    hutong_server::consent::trail::checkpoint_store(&store, &keys)
        .map_err(|e| anyhow::anyhow!(e.message().to_string()))?;
    Ok(())
}

pub fn audit(s: &Settings, cmd: AuditCmd) -> anyhow::Result<()> {
    let engine = crate::existing_engine(s)?;
    match cmd {
        AuditCmd::Verify { witness } => {
            let mut r = hutong_server::consent::trail::verify_report(&engine)
                .map_err(|e| anyhow::anyhow!(e.message().to_string()))?;
            if let Some(w) = &witness {
                let text = std::fs::read_to_string(w)
                    .with_context(|| format!("reading the witness file {}", w.display()))?;
                let v: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not JSON", w.display()))?;
                let list = v["checkpoints"]
                    .as_array()
                    .or(v.as_array())
                    .with_context(|| {
                        format!(
                            "{} holds no checkpoints (as GET /audit/checkpoints gives them)",
                            w.display()
                        )
                    })?;
                hutong_audit::verify::against_witness(&engine.store, list, &mut r)?;
                println!("{} checkpoint(s) held by the witness checked.", list.len());
            }
            println!(
                "{} entries in {} partition(s), {} signed checkpoint(s); {} entries after the last checkpoint.",
                r.entries, r.partitions, r.checkpoints, r.unsigned
            );
            if r.proven() {
                println!("The audit trail is intact.");
                Ok(())
            } else if r.intact() {
                println!(
                    "UNPROVEN: the chain holds, but {} entries after the last signed checkpoint are protected by the chain alone (whoever can write the database could have changed, removed or appended them). `hutong audit checkpoint` signs them.",
                    r.unsigned
                );
                std::process::exit(2);
            } else {
                println!("The audit trail has been tampered with:");
                for p in &r.problems {
                    println!("  {p}");
                }
                anyhow::bail!("{}", r.problems[0])
            }
        }
        AuditCmd::Checkpoints => {
            let list = hutong_audit::checkpoint::published(&engine.store)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({"checkpoints": list}))?
            );
            Ok(())
        }
        AuditCmd::Checkpoint => {
            let n = hutong_server::consent::trail::checkpoint(&engine)
                .map_err(|e| anyhow::anyhow!(e.message().to_string()))?;
            println!("Signed {n} checkpoint(s).");
            Ok(())
        }
        AuditCmd::Show { person, limit } => {
            let shards: Option<Vec<i64>> = match &person {
                Some(p) => Some(
                    engine
                        .matcher
                        .patients_of(&engine.store, p)?
                        .iter()
                        .map(|x| hutong_store::shard_of(x.trim_start_matches("Patient/")))
                        .collect(),
                ),
                None => None,
            };
            let (rows, total) =
                engine
                    .store
                    .audit_about(shards.as_deref(), i64::MIN, i64::MAX, limit, 0)?;
            println!("{total} entries; the newest {}:", rows.len());
            for r in rows {
                if let Some(e) = hutong_audit::Entry::parse(&r.entry) {
                    println!(
                        "{}  {:<14} {:<4} {:<40} {}",
                        hutong_fhir::date::format_instant(e.ts),
                        e.action,
                        e.outcome,
                        format!("{} {}", e.who.kind, e.who.name.unwrap_or(e.who.subject)),
                        e.request
                    );
                }
            }
            Ok(())
        }
    }
}

//! The tenant actor: one per tenant, the owner of the tenant's identity (id, SIP domain,
//! realm) and its user directory size; limits, rules, numbers, queues and agents hang off it
//! in later stages. Found by its stable name `tenant/<id>@<node>`.
//!
//! Data isolation is by construction: every lookup (users, bindings) is keyed by tenant id,
//! and a request is mapped to exactly one tenant by the domain it is addressed to.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::config::TenantConfig;

pub const TENANTS: &str = "switchyard_tenants";

/// Describes the tenant metrics.
pub fn describe() {
    metrics::describe_gauge!(TENANTS, "Tenant actors running");
}

/// The registered name of a tenant's actor.
pub fn actor_name(tenant: &str, node: &str) -> String {
    format!("tenant/{tenant}@{node}")
}

/// Finds a tenant's actor by name.
pub fn lookup(tenant: &str, node: &str) -> Option<ActorRef<TenantMsg>> {
    ractor::registry::where_is(actor_name(tenant, node)).map(Into::into)
}

/// Asks a tenant for its summary.
pub async fn info(
    tenant: &ActorRef<TenantMsg>,
) -> Result<TenantInfo, ractor::RactorErr<TenantMsg>> {
    ractor::call_t!(tenant, TenantMsg::GetInfo, 2000)
}

#[derive(Clone, Copy, Debug, Default)]
pub struct TenantActor;

/// What a tenant actor starts from: its configuration.
pub struct TenantArgs {
    pub config: TenantConfig,
    /// Users counted when the directory was loaded (inline plus CSV).
    pub users: usize,
}

pub enum TenantMsg {
    GetInfo(RpcReplyPort<TenantInfo>),
}

// Local only: ractor's `cluster` feature (on for ractor_cluster) asks each message type to
// say whether it can cross nodes; this one never does (the cluster module carries what does).
impl ractor::Message for TenantMsg {}

/// A tenant's summary (API and tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantInfo {
    pub id: String,
    pub domain: String,
    pub realm: String,
    pub users: usize,
}

pub struct TenantState {
    info: TenantInfo,
}

impl Actor for TenantActor {
    type Msg = TenantMsg;
    type State = TenantState;
    type Arguments = TenantArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<TenantMsg>,
        args: TenantArgs,
    ) -> Result<TenantState, ActorProcessingErr> {
        metrics::gauge!(TENANTS).increment(1.0);
        let c = args.config;
        Ok(TenantState {
            info: TenantInfo {
                realm: c.realm().to_string(),
                id: c.id,
                domain: c.domain,
                users: args.users,
            },
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<TenantMsg>,
        _state: &mut TenantState,
    ) -> Result<(), ActorProcessingErr> {
        metrics::gauge!(TENANTS).decrement(1.0);
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<TenantMsg>,
        msg: TenantMsg,
        state: &mut TenantState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TenantMsg::GetInfo(reply) => {
                let _ = reply.send(state.info.clone());
            }
        }
        Ok(())
    }
}

//! Exchange (上下贯通) as rules without I/O: what the platform offers to subscribe to, how a
//! `Subscription` asks for it, what a notification looks like and when a failed delivery is
//! tried again — so that the server's dispatcher, its operations and the tests agree.
//!
//! Layout:
//! - [`topic`]: the catalogue of `SubscriptionTopic`s (data: `data/topics.json`).
//! - [`spec`]: a `Subscription` read as the Subscriptions R5 Backport IG (topic-based) or
//!   FHIR R4 (a search as criteria) define it: filters, channel, payload, heartbeat.
//! - [`notify`]: notification Bundles (`history`, the `SubscriptionStatus` first, events
//!   numbered per subscription) and the signature a receiver checks.
//! - [`backoff`]: when a delivery that failed is tried again.
//! - [`node`]: a node of the platform hierarchy (district, city, province), and the
//!   `history` Bundles that carry records between nodes with their route and origin.

pub mod backoff;
pub mod node;
pub mod notify;
pub mod spec;
pub mod topic;

pub use notify::{Content, Event, NotificationKind};
pub use spec::{mask_secrets, restore_secrets, Channel, ChannelKind, Filter, Spec, SpecError};
pub use topic::{Topic, Topics};

/// The Backport IG's extensions and profiles.
pub mod ig {
    pub const BASE: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition";
    pub const FILTER_CRITERIA: &str =
        "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria";
    pub const PAYLOAD_CONTENT: &str =
        "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content";
    pub const HEARTBEAT: &str =
        "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-heartbeat-period";
    pub const TIMEOUT: &str =
        "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-timeout";
    pub const MAX_COUNT: &str =
        "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-max-count";
    pub const SUBSCRIPTION_PROFILE: &str =
        "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription";
    pub const STATUS_PROFILE: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4";
    pub const NOTIFICATION_PROFILE: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-notification-r4";
    /// The CapabilityStatement extension naming a topic the server offers.
    pub const TOPIC_CANONICAL: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/capabilitystatement-subscriptiontopic-canonical";
    /// The platform's own: the shared secret the receiver checks notifications' signatures
    /// with (`X-Hutong-Signature: sha256=<hex HMAC of the body>`).
    pub const SIGNING_SECRET: &str =
        "https://hutong.dev/fhir/StructureDefinition/subscription-signing-secret";
}

//! Everything that talks to Azure: tokens ([`credential`]), one ARM request
//! with its retries ([`arm`]), the activity log List call ([`activity_log`]),
//! and what Guardrails' event handlers leave in Azure ([`handlers`]), read for
//! up to 1,000 subscriptions a query through Resource Graph ([`resource_graph`]).

pub mod activity_log;
pub mod arm;
pub mod budget;
pub mod credential;
pub mod handlers;
pub mod resource_graph;

pub use activity_log::{ActivityLogClient, Fetched};
pub use arm::{AzureError, Got};
pub use budget::ReadBudget;
pub use credential::{CredentialError, TokenSource};
pub use resource_graph::{GraphError, GraphHandlers, ResourceGraphClient};

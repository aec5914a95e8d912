//! Everything that talks to Azure: tokens ([`credential`]) and the activity log
//! List call ([`activity_log`]).

pub mod activity_log;
pub mod budget;
pub mod credential;

pub use activity_log::{ActivityLogClient, AzureError, Fetched, Got};
pub use budget::ReadBudget;
pub use credential::{CredentialError, TokenSource};

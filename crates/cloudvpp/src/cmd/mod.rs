//! One module per subcommand; [`api`] is the admin API client the client commands share.

pub mod api;
pub mod appsbooks;
pub mod invitations;
pub mod invite;
pub mod licences;
pub mod mdm;
pub mod serve;
pub mod simulate;

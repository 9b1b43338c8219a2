//! [`Unimplemented`]: the etcd services kvstore does not serve yet (Auth), each
//! method answering UNIMPLEMENTED with one line naming it (see [`not_implemented`]).
//!
//! A method kvstore serves moves out of here into a service of its own; until then etcd
//! clients reach a registered service and learn which call is missing, instead of gRPC's
//! bare "unknown service".

use super::errors::not_implemented;
use crate::pb::etcd::etcdserverpb::*;
use tonic::{Request, Response, Status};

/// Serves each etcd service as UNIMPLEMENTED, method by method.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unimplemented;

/// Implements `$service` for [`Unimplemented`]: each `fn method(Request) -> Response = "Name";`
/// answers [`not_implemented`] with `$name/Name` (`$name` being gRPC's service name, e.g.
/// `etcdserverpb.KV`); `type X = T;` lines give the streaming methods' stream types.
macro_rules! unimplemented_service {
    ($service:path, $name:literal {
        $(type $stream:ident = $stream_ty:ty;)*
        $(fn $method:ident($request:ty) -> $response:ty = $method_name:literal;)*
    }) => {
        #[tonic::async_trait]
        impl $service for Unimplemented {
            $(type $stream = $stream_ty;)*
            $(
                async fn $method(
                    &self,
                    _request: Request<$request>,
                ) -> Result<Response<$response>, Status> {
                    Err(not_implemented(concat!($name, "/", $method_name)))
                }
            )*
        }
    };
}

unimplemented_service!(kv_server::Kv, "etcdserverpb.KV" {
    fn range(RangeRequest) -> RangeResponse = "Range";
    fn put(PutRequest) -> PutResponse = "Put";
    fn delete_range(DeleteRangeRequest) -> DeleteRangeResponse = "DeleteRange";
    fn txn(TxnRequest) -> TxnResponse = "Txn";
    fn compact(CompactionRequest) -> CompactionResponse = "Compact";
});

unimplemented_service!(auth_server::Auth, "etcdserverpb.Auth" {
    fn auth_enable(AuthEnableRequest) -> AuthEnableResponse = "AuthEnable";
    fn auth_disable(AuthDisableRequest) -> AuthDisableResponse = "AuthDisable";
    fn auth_status(AuthStatusRequest) -> AuthStatusResponse = "AuthStatus";
    fn authenticate(AuthenticateRequest) -> AuthenticateResponse = "Authenticate";
    fn user_add(AuthUserAddRequest) -> AuthUserAddResponse = "UserAdd";
    fn user_get(AuthUserGetRequest) -> AuthUserGetResponse = "UserGet";
    fn user_list(AuthUserListRequest) -> AuthUserListResponse = "UserList";
    fn user_delete(AuthUserDeleteRequest) -> AuthUserDeleteResponse = "UserDelete";
    fn user_change_password(AuthUserChangePasswordRequest) -> AuthUserChangePasswordResponse
        = "UserChangePassword";
    fn user_grant_role(AuthUserGrantRoleRequest) -> AuthUserGrantRoleResponse = "UserGrantRole";
    fn user_revoke_role(AuthUserRevokeRoleRequest) -> AuthUserRevokeRoleResponse = "UserRevokeRole";
    fn role_add(AuthRoleAddRequest) -> AuthRoleAddResponse = "RoleAdd";
    fn role_get(AuthRoleGetRequest) -> AuthRoleGetResponse = "RoleGet";
    fn role_list(AuthRoleListRequest) -> AuthRoleListResponse = "RoleList";
    fn role_delete(AuthRoleDeleteRequest) -> AuthRoleDeleteResponse = "RoleDelete";
    fn role_grant_permission(AuthRoleGrantPermissionRequest) -> AuthRoleGrantPermissionResponse
        = "RoleGrantPermission";
    fn role_revoke_permission(AuthRoleRevokePermissionRequest) -> AuthRoleRevokePermissionResponse
        = "RoleRevokePermission";
});

/*
 * libpq, loaded with dlopen() the first time a postgres store is opened.
 *
 * Linking libpq into libtasker would map libpq and what it pulls in (OpenSSL,
 * GSSAPI, LDAP) into every process that uses tasker, memory store or not: a
 * few MiB of RSS for nothing.  Files of the postgres store include this header
 * instead of <libpq-fe.h>; their PQ* calls then go through a table filled by
 * tk_pq_load().
 */
#ifndef TASKER_STORE_PQ_DL_H
#define TASKER_STORE_PQ_DL_H

#include <libpq-fe.h>

#define TK_PQ_FUNCTIONS(X)                                                               \
    X(PQconnectdb) X(PQconnectdbParams) X(PQconnectStart) X(PQconnectStartParams)        \
    X(PQconnectPoll) X(PQfinish) X(PQreset) X(PQstatus) X(PQtransactionStatus)           \
    X(PQerrorMessage) X(PQsocket) X(PQbackendPID) X(PQserverVersion) X(PQdb) X(PQuser)   \
    X(PQhost) X(PQport) X(PQparameterStatus) X(PQping) X(PQpingParams) X(PQexec)         \
    X(PQexecParams) X(PQprepare) X(PQexecPrepared) X(PQdescribePrepared)                 \
    X(PQsendQuery) X(PQsendQueryParams) X(PQsendPrepare) X(PQsendQueryPrepared)          \
    X(PQgetResult) X(PQisBusy) X(PQconsumeInput) X(PQsetnonblocking) X(PQisnonblocking)  \
    X(PQflush) X(PQenterPipelineMode) X(PQexitPipelineMode) X(PQpipelineSync)            \
    X(PQpipelineStatus) X(PQsendFlushRequest) X(PQnotifies) X(PQresultStatus)           \
    X(PQresStatus) X(PQresultErrorMessage) X(PQresultErrorField) X(PQntuples)            \
    X(PQnfields) X(PQfname) X(PQfnumber) X(PQftype) X(PQgetvalue) X(PQgetlength)         \
    X(PQgetisnull) X(PQcmdStatus) X(PQcmdTuples) X(PQclear) X(PQfreemem)                 \
    X(PQconninfoParse) X(PQconninfoFree) X(PQconninfo) X(PQescapeLiteral)                \
    X(PQescapeIdentifier) X(PQsetErrorVerbosity) X(PQsetNoticeProcessor)                 \
    X(PQsetNoticeReceiver) X(PQlibVersion) X(PQputCopyData) X(PQputCopyEnd)              \
    X(PQgetCopyData)

#define TK_PQ_MEMBER(name) __typeof__(name) *name;
typedef struct tk_pq_api {
    TK_PQ_FUNCTIONS(TK_PQ_MEMBER)
} tk_pq_api;
#undef TK_PQ_MEMBER

extern tk_pq_api tk_pq;

/* Loads libpq once; TASKER_OK, or TASKER_ENOTSUP with a message naming the
 * library that could not be loaded.  Thread-safe. */
int tk_pq_load(void);

#ifndef TK_PQ_DL_IMPLEMENTATION
#define TK_PQ_REDIRECT(name) /* see the #defines below */
#define PQconnectdb tk_pq.PQconnectdb
#define PQconnectdbParams tk_pq.PQconnectdbParams
#define PQconnectStart tk_pq.PQconnectStart
#define PQconnectStartParams tk_pq.PQconnectStartParams
#define PQconnectPoll tk_pq.PQconnectPoll
#define PQfinish tk_pq.PQfinish
#define PQreset tk_pq.PQreset
#define PQstatus tk_pq.PQstatus
#define PQtransactionStatus tk_pq.PQtransactionStatus
#define PQerrorMessage tk_pq.PQerrorMessage
#define PQsocket tk_pq.PQsocket
#define PQbackendPID tk_pq.PQbackendPID
#define PQserverVersion tk_pq.PQserverVersion
#define PQdb tk_pq.PQdb
#define PQuser tk_pq.PQuser
#define PQhost tk_pq.PQhost
#define PQport tk_pq.PQport
#define PQparameterStatus tk_pq.PQparameterStatus
#define PQping tk_pq.PQping
#define PQpingParams tk_pq.PQpingParams
#define PQexec tk_pq.PQexec
#define PQexecParams tk_pq.PQexecParams
#define PQprepare tk_pq.PQprepare
#define PQexecPrepared tk_pq.PQexecPrepared
#define PQdescribePrepared tk_pq.PQdescribePrepared
#define PQsendQuery tk_pq.PQsendQuery
#define PQsendQueryParams tk_pq.PQsendQueryParams
#define PQsendPrepare tk_pq.PQsendPrepare
#define PQsendQueryPrepared tk_pq.PQsendQueryPrepared
#define PQgetResult tk_pq.PQgetResult
#define PQisBusy tk_pq.PQisBusy
#define PQconsumeInput tk_pq.PQconsumeInput
#define PQsetnonblocking tk_pq.PQsetnonblocking
#define PQisnonblocking tk_pq.PQisnonblocking
#define PQflush tk_pq.PQflush
#define PQenterPipelineMode tk_pq.PQenterPipelineMode
#define PQexitPipelineMode tk_pq.PQexitPipelineMode
#define PQpipelineSync tk_pq.PQpipelineSync
#define PQpipelineStatus tk_pq.PQpipelineStatus
#define PQsendFlushRequest tk_pq.PQsendFlushRequest
#define PQnotifies tk_pq.PQnotifies
#define PQresultStatus tk_pq.PQresultStatus
#define PQresStatus tk_pq.PQresStatus
#define PQresultErrorMessage tk_pq.PQresultErrorMessage
#define PQresultErrorField tk_pq.PQresultErrorField
#define PQntuples tk_pq.PQntuples
#define PQnfields tk_pq.PQnfields
#define PQfname tk_pq.PQfname
#define PQfnumber tk_pq.PQfnumber
#define PQftype tk_pq.PQftype
#define PQgetvalue tk_pq.PQgetvalue
#define PQgetlength tk_pq.PQgetlength
#define PQgetisnull tk_pq.PQgetisnull
#define PQcmdStatus tk_pq.PQcmdStatus
#define PQcmdTuples tk_pq.PQcmdTuples
#define PQclear tk_pq.PQclear
#define PQfreemem tk_pq.PQfreemem
#define PQconninfoParse tk_pq.PQconninfoParse
#define PQconninfoFree tk_pq.PQconninfoFree
#define PQconninfo tk_pq.PQconninfo
#define PQescapeLiteral tk_pq.PQescapeLiteral
#define PQescapeIdentifier tk_pq.PQescapeIdentifier
#define PQsetErrorVerbosity tk_pq.PQsetErrorVerbosity
#define PQsetNoticeProcessor tk_pq.PQsetNoticeProcessor
#define PQsetNoticeReceiver tk_pq.PQsetNoticeReceiver
#define PQlibVersion tk_pq.PQlibVersion
#define PQputCopyData tk_pq.PQputCopyData
#define PQputCopyEnd tk_pq.PQputCopyEnd
#define PQgetCopyData tk_pq.PQgetCopyData
#endif

#endif

// offload-react.js: `useBackgroundJob()` for React pages, on top of offload.js.
//
// React is not bundled, and an ES module served without a build step cannot import the
// application's bare "react" specifier, so the application hands its React in:
//
//   import React from "react";
//   import { Offload } from "/static/offload.js";
//   import { createUseBackgroundJob } from "/static/offload-react.js";
//   export const useBackgroundJob = createUseBackgroundJob(React, new Offload({ token }));
//
//   function InvoiceButton({ order, items }) {
//     const { createJob, progress, status, error, download, cancel } = useBackgroundJob();
//     ...  onClick={() => createJob("pdf", { type: "invoice", order, items })}
//   }
//
// The hook follows its job over the client's one WebSocket (no polling): a snapshot first,
// then every progress and status event, across reconnects. It uses only useState, useEffect,
// useRef and useCallback, so React 16.8 and later (and Preact's compat layer) all work.

import { Offload, OffloadError, isTerminal } from "./offload.js";

/**
 * Make `useBackgroundJob` for `React` and one `client` (an `Offload`; default: the page's
 * origin, no token). Call it once at module level and export the hook.
 *
 * `useBackgroundJob(jobId?)` returns:
 * - `createJob(type, data, options?)`: submits a job and follows it; resolves its id
 *   (rejects with the OffloadError, which is also in `error`).
 * - `job`: the latest job object (the API's wire format), or null.
 * - `progress`: 0..100. `status`: "idle", "submitting", then the job's status.
 * - `error`: an OffloadError (submission, cancel or download failed, or an event error
 *   such as not_found), or the job's own `error` ({type, message}) once it failed; else null.
 * - `download(filename?)`: saves the result file and resolves its Blob.
 * - `cancel()`: cancels the job (resolves the job the server answered).
 * Passing a `jobId` follows an existing job (e.g. one whose id the page stored).
 */
export function createUseBackgroundJob(React, client = new Offload()) {
  const { useState, useEffect, useRef, useCallback } = React;

  return function useBackgroundJob(initialJobId = null) {
    const [jobId, setJobId] = useState(initialJobId);
    const [job, setJob] = useState(null);
    const [submitting, setSubmitting] = useState(false);
    const [failure, setFailure] = useState(null);
    const current = useRef(jobId); // the job the latest call is about, for late answers
    const mounted = useRef(true);

    useEffect(() => {
      mounted.current = true;
      return () => {
        mounted.current = false;
      };
    }, []);

    useEffect(() => {
      current.current = jobId;
      if (!jobId) return undefined;
      return client.watch(jobId, (event) => {
        if (!mounted.current || current.current !== jobId) return;
        if (event.event === "snapshot" || event.event === "status") {
          setJob(event.job);
        } else if (event.event === "progress") {
          setJob((known) => (known && known.id === jobId
            ? { ...known, progress: event.progress, message: event.message, seq: event.seq }
            : known));
        } else if (event.event === "error") {
          setFailure(new OffloadError(event.code, event.message));
        }
      });
    }, [jobId]);

    const createJob = useCallback(async (type, data, options) => {
      setSubmitting(true);
      setFailure(null);
      setJob(null);
      try {
        const answer = await client.submit(type, data, options);
        if (mounted.current) {
          current.current = answer.jobId;
          setJobId(answer.jobId);
        }
        return answer.jobId;
      } catch (err) {
        if (mounted.current) setFailure(err);
        throw err;
      } finally {
        if (mounted.current) setSubmitting(false);
      }
    }, []);

    const guarded = (action) => async (...args) => {
      const id = current.current;
      if (!id) throw new OffloadError("no_job", "there is no job yet: call createJob first");
      try {
        return await action(id, ...args);
      } catch (err) {
        if (mounted.current && current.current === id) setFailure(err);
        throw err;
      }
    };
    const download = useCallback(guarded((id, filename) => client.save(id, filename)), []);
    const cancel = useCallback(guarded(async (id) => {
      const answer = await client.cancel(id);
      if (mounted.current && current.current === id) {
        setJob((known) => (!known || answer.seq >= known.seq ? answer : known));
      }
      return answer;
    }), []);

    const status = job ? job.status : submitting ? "submitting" : "idle";
    const progress = job ? Math.max(0, Math.min(100, Number(job.progress) || 0)) : 0;
    const error = failure ?? (job && job.status === "failed" ? job.error : null);
    return { createJob, job, progress, status, error, download, cancel, jobId, done: !!job && isTerminal(job.status) };
  };
}
